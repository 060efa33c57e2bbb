//! What the swarm runtime remembers between calls: the tasks it handed out (whose
//! deaths it must report), the tasks it knows dead, and the services it kept for a
//! replacement. Shared by its calls and its watchers behind one mutex; pure.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a dead task is remembered: far longer than the tasks API can lag.
const REMEMBER_DEAD: Duration = Duration::from_secs(300);

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// Task id → service id of every task handed to the managed source as a replica's
    /// incarnation, until `stop` releases it.
    handed: HashMap<String, String>,
    /// Tasks known dead, and since when: never handed out again.
    dead: HashMap<String, Instant>,
    /// Deaths already reported, so the event stream and the poller report each once.
    reported: HashSet<String>,
    /// Services kept after their task died, waiting for the `start` that replaces
    /// it: service name → the generation of that keep.
    kept: HashMap<String, u64>,
    generation: u64,
}

impl Tracker {
    /// `task` of `service` is a replica's incarnation from now on.
    pub fn hand_out(&mut self, task: &str, service: &str) {
        self.handed.insert(task.to_string(), service.to_string());
    }

    /// Every handed-out task and its service.
    pub fn handed(&self) -> Vec<(String, String)> {
        self.handed
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect()
    }

    /// The task is no one's incarnation any more (its replica was stopped or
    /// replaced); returns its service.
    pub fn release(&mut self, task: &str) -> Option<String> {
        self.reported.remove(task);
        self.handed.remove(task)
    }

    /// `task` died; true when this is news to report (it was handed out and its
    /// death not reported yet).
    pub fn died(&mut self, task: &str, now: Instant) -> bool {
        self.dead.entry(task.to_string()).or_insert(now);
        self.handed.contains_key(task) && self.reported.insert(task.to_string())
    }

    pub fn is_dead(&self, task: &str) -> bool {
        self.dead.contains_key(task)
    }

    /// Forgets deaths old enough that no listing still shows the task running.
    pub fn prune(&mut self, now: Instant) {
        self.dead
            .retain(|_, at| now.saturating_duration_since(*at) < REMEMBER_DEAD);
    }

    /// Service `name` stays for the `start` that should follow; returns the keep's
    /// generation, for [`Tracker::expire`].
    pub fn keep(&mut self, name: &str) -> u64 {
        self.generation += 1;
        self.kept.insert(name.to_string(), self.generation);
        self.generation
    }

    /// A `start` took service `name` over: it is no longer waiting.
    pub fn claim(&mut self, name: &str) {
        self.kept.remove(name);
    }

    /// Whether keep `generation` of service `name` was never claimed (and now
    /// ends): the service belongs to no replica and is to be deleted.
    pub fn expire(&mut self, name: &str, generation: u64) -> bool {
        if self.kept.get(name) == Some(&generation) {
            self.kept.remove(name);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_is_reported_once_and_only_for_a_handed_out_task() {
        let mut t = Tracker::default();
        let now = Instant::now();
        t.hand_out("t1", "s1");
        assert!(t.died("t1", now), "first news");
        assert!(!t.died("t1", now), "the poller after the event stream");
        assert!(!t.died("t2", now), "not handed out: nobody to tell");
        assert!(t.is_dead("t1") && t.is_dead("t2"));
        assert_eq!(t.release("t1").as_deref(), Some("s1"));
        assert!(t.handed().is_empty());
        assert!(t.is_dead("t1"), "still never handed out again");
    }

    #[test]
    fn dead_tasks_are_forgotten_after_a_while() {
        let mut t = Tracker::default();
        let then = Instant::now();
        t.died("t1", then);
        t.prune(then + Duration::from_secs(1));
        assert!(t.is_dead("t1"));
        t.prune(then + REMEMBER_DEAD);
        assert!(!t.is_dead("t1"));
    }

    #[test]
    fn a_kept_service_expires_unless_a_start_claims_it() {
        let mut t = Tracker::default();
        let g = t.keep("blue-Server2");
        t.claim("blue-Server2");
        assert!(
            !t.expire("blue-Server2", g),
            "claimed: the replica lives on"
        );

        let g1 = t.keep("blue-Server2");
        let g2 = t.keep("blue-Server2");
        assert!(!t.expire("blue-Server2", g1), "a later keep supersedes it");
        assert!(t.expire("blue-Server2", g2), "nobody came for it");
        assert!(!t.expire("blue-Server2", g2), "once");
    }
}
