//! Load-aware policies: a [`Rule`] picks a request's first replica from the
//! backends' live figures; the others follow in id order after it, so failover
//! still has somewhere to go.
//!
//! A first choice is found in up to three passes, each less strict: a selectable
//! replica that is warm enough (slow start); any selectable one; any at all (trying
//! an ejected or unavailable replica beats refusing when all are). Rules only ever
//! see the pass's test, so each is a small function in [`super::rules`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::rules::{least, p2c, pick_first, random, resource_fit, round_robin};
use super::{warm_enough, Ask, Picker, Policy};
use crate::backend::{Backend, ServerId};
use crate::ring::RingError;

/// One load-aware rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    PickFirst,
    RoundRobin,
    WeightedRoundRobin,
    Random,
    LeastConnections,
    LeastLoad,
    P2cEwma,
    ResponseTime,
    HealthScore,
    FailureWeightedRoundRobin,
    ResourceFit,
}

impl Rule {
    /// Every rule, in the order `/policy` lists them.
    pub const ALL: [Rule; 11] = [
        Rule::PickFirst,
        Rule::RoundRobin,
        Rule::WeightedRoundRobin,
        Rule::Random,
        Rule::LeastConnections,
        Rule::LeastLoad,
        Rule::P2cEwma,
        Rule::ResponseTime,
        Rule::HealthScore,
        Rule::FailureWeightedRoundRobin,
        Rule::ResourceFit,
    ];

    /// Its `--policy` name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::PickFirst => "pick-first",
            Rule::RoundRobin => "round-robin",
            Rule::WeightedRoundRobin => "weighted-round-robin",
            Rule::Random => "random",
            Rule::LeastConnections => "least-connections",
            Rule::LeastLoad => "least-load",
            Rule::P2cEwma => "p2c-ewma",
            Rule::ResponseTime => "response-time",
            Rule::HealthScore => "health-score",
            Rule::FailureWeightedRoundRobin => "failure-weighted-round-robin",
            Rule::ResourceFit => "resource-fit",
        }
    }

    /// The rule with this `--policy` name.
    pub fn by_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether it takes turns, and so needs the shared turn counter.
    fn takes_turns(self) -> bool {
        matches!(
            self,
            Rule::RoundRobin | Rule::WeightedRoundRobin | Rule::FailureWeightedRoundRobin
        )
    }

    /// The first choice among `backends` that pass `ok`.
    fn choose(
        self,
        backends: &[Arc<Backend>],
        ok: &dyn Fn(&Backend) -> bool,
        ask: &Ask<'_>,
        turn: usize,
    ) -> Option<usize> {
        let now = ask.now;
        match self {
            Rule::PickFirst => pick_first::choose(backends, ok),
            Rule::RoundRobin => round_robin::weighted(backends, ok, turn, |_| 1),
            Rule::WeightedRoundRobin => round_robin::weighted(backends, ok, turn, Backend::weight),
            Rule::FailureWeightedRoundRobin => {
                round_robin::weighted(backends, ok, turn, |b| round_robin::failure_weight(b, now))
            }
            Rule::Random => random::choose(backends, ok, ask.draw),
            Rule::LeastConnections => least::choose(backends, ok, ask.draw, |b| b.load()),
            Rule::LeastLoad => {
                least::choose(backends, ok, ask.draw, |b| (b.estimated_load(), b.load()))
            }
            Rule::ResponseTime => {
                least::choose(backends, ok, ask.draw, |b| (b.latency(now), b.load()))
            }
            Rule::P2cEwma => p2c::choose_ewma(backends, ok, ask.draw, now),
            Rule::HealthScore => p2c::choose(backends, ok, ask.draw, |b| -b.score(now)),
            Rule::ResourceFit => resource_fit::choose(backends, ok, ask.draw, ask.demand),
        }
    }
}

/// A load-aware policy: a rule and the turn counter it keeps across republishing.
#[derive(Debug)]
pub struct LoadPolicy {
    rule: Rule,
    capacity: usize,
    slow_start: Option<Duration>,
    /// Shared with every picker, so a turn-taking rule stays fair when the
    /// snapshot is republished.
    turns: Arc<AtomicUsize>,
}

impl LoadPolicy {
    /// The policy of `rule`, placing at most `capacity` replicas (the ring's, so
    /// that switching to a hash policy always fits).
    pub fn new(rule: Rule, capacity: usize, slow_start: Option<Duration>) -> Self {
        LoadPolicy {
            rule,
            capacity,
            slow_start,
            turns: Arc::default(),
        }
    }
}

impl Policy for LoadPolicy {
    fn name(&self) -> &'static str {
        self.rule.name()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn join(&mut self, _id: ServerId) -> Result<(), RingError> {
        Ok(())
    }

    fn leave(&mut self, _id: ServerId) {}

    fn picker(&self, routable: Vec<Arc<Backend>>) -> Picker {
        Picker::Load(LoadPicker {
            rule: self.rule,
            backends: routable,
            slow_start: self.slow_start,
            turns: self.turns.clone(),
        })
    }
}

/// A load-aware policy's picker: its rule over the routable backends.
#[derive(Debug, Clone)]
pub struct LoadPicker {
    rule: Rule,
    /// In id order, as `/rep` lists them.
    backends: Vec<Arc<Backend>>,
    slow_start: Option<Duration>,
    turns: Arc<AtomicUsize>,
}

impl LoadPicker {
    /// Its rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Every routable backend, in id order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The routable backend with this id.
    pub fn backend(&self, id: ServerId) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// The first choice for `ask`, passes less and less strict.
    pub fn first(&self, ask: &Ask<'_>) -> Option<usize> {
        // One turn per request, taken only by the rules that take turns: the
        // counter is the one write other rules would not need.
        let turn = if self.rule.takes_turns() {
            self.turns.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let (draw, now, slow) = (ask.draw, ask.now, self.slow_start);
        let choose =
            |ok: &dyn Fn(&Backend) -> bool| self.rule.choose(&self.backends, ok, ask, turn);
        let warm = slow
            .and_then(|_| choose(&|b: &Backend| b.selectable() && warm_enough(b, draw, now, slow)));
        warm.or_else(|| choose(&|b: &Backend| b.selectable()))
            .or_else(|| choose(&|b: &Backend| b.enabled()))
    }

    /// The candidates for `ask`: the rule's first choice, then every other
    /// selectable backend in id order after it, then the unselectable ones.
    pub fn candidates(&self, ask: &Ask<'_>) -> LoadCandidates<'_> {
        LoadCandidates {
            backends: &self.backends,
            first: self.first(ask),
            stage: Stage::First,
            step: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    First,
    Selectable,
    Rest,
    Done,
}

/// A load-aware picker's candidates for one request; allocates nothing.
#[derive(Debug)]
pub struct LoadCandidates<'a> {
    backends: &'a [Arc<Backend>],
    first: Option<usize>,
    stage: Stage,
    step: usize,
}

impl<'a> Iterator for LoadCandidates<'a> {
    type Item = &'a Arc<Backend>;

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.backends.len();
        let first = self.first?;
        loop {
            match self.stage {
                Stage::First => {
                    self.stage = Stage::Selectable;
                    return Some(&self.backends[first]);
                }
                Stage::Selectable | Stage::Rest => {
                    let want = self.stage == Stage::Selectable;
                    while self.step + 1 < n {
                        self.step += 1;
                        let b = &self.backends[(first + self.step) % n];
                        if b.enabled() && b.selectable() == want {
                            return Some(b);
                        }
                    }
                    self.step = 0;
                    self.stage = if want { Stage::Rest } else { Stage::Done };
                }
                Stage::Done => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::backend::EJECT_AFTER_FAILURES;
    use crate::policy::testing::{backends, old_backend};

    fn picker(rule: Rule, set: Vec<Arc<Backend>>) -> LoadPicker {
        let Picker::Load(p) = LoadPolicy::new(rule, 56, None).picker(set) else {
            unreachable!()
        };
        p
    }

    fn ask(draw: u64) -> Ask<'static> {
        Ask {
            key: 0,
            draw,
            now: Instant::now(),
            demand: None,
        }
    }

    fn order(p: &LoadPicker, draw: u64) -> Vec<ServerId> {
        p.candidates(&ask(draw)).map(|b| b.id).collect()
    }

    #[test]
    fn every_rule_has_a_distinct_name_that_finds_it_again() {
        for rule in Rule::ALL {
            assert_eq!(Rule::by_name(rule.name()), Some(rule));
        }
        assert_eq!(Rule::by_name("least_load"), None);
    }

    #[test]
    fn candidates_start_with_the_choice_and_name_each_enabled_backend_once() {
        let set = backends(&[1, 2, 3, 4]);
        set[2].set_enabled(false);
        for rule in Rule::ALL {
            let p = picker(rule, set.clone());
            for draw in 0..50u64 {
                let mut ids = order(&p, draw.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                ids.sort_unstable();
                assert_eq!(ids, [1, 2, 4], "{}", rule.name());
            }
        }
    }

    #[test]
    fn no_rule_puts_a_disabled_ejected_or_unavailable_replica_first() {
        let set = backends(&[1, 2, 3, 4]);
        set[0].set_enabled(false);
        set[1].report(0, false);
        for _ in 0..EJECT_AFTER_FAILURES {
            set[2].record_failure();
        }
        for rule in Rule::ALL {
            let p = picker(rule, set.clone());
            for draw in 0..50u64 {
                let ids = order(&p, draw * 7919);
                assert_eq!(ids[0], 4, "{}", rule.name());
                assert!(!ids.contains(&1), "{}", rule.name());
                // The unselectable ones still come, last.
                assert_eq!(ids.len(), 3, "{}", rule.name());
            }
        }
    }

    #[test]
    fn when_none_is_selectable_an_unselectable_one_is_still_tried() {
        let set = backends(&[1, 2]);
        set[0].report(0, false);
        set[1].report(0, false);
        for rule in Rule::ALL {
            assert_eq!(order(&picker(rule, set.clone()), 1).len(), 2);
        }
    }

    #[test]
    fn no_backends_means_no_candidates() {
        for rule in Rule::ALL {
            assert!(order(&picker(rule, Vec::new()), 1).is_empty());
        }
    }

    #[test]
    fn with_slow_start_a_new_replica_is_rarely_first_at_first() {
        let set = vec![old_backend(1), old_backend(2), backends(&[3]).remove(0)];
        let Picker::Load(p) =
            LoadPolicy::new(Rule::Random, 56, Some(Duration::from_secs(100))).picker(set)
        else {
            unreachable!()
        };
        let firsts = (0..3000u64)
            .filter(|d| order(&p, d.wrapping_mul(0x2545_F491_4F6C_DD1D))[0] == 3)
            .count();
        assert!(firsts < 30, "{firsts}");
    }
}
