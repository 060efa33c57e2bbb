//! Hedged requests (Dean and Barroso, "The Tail at Scale"): an idempotent request
//! without a body whose replica has sent no response head after a while is also
//! sent to the next candidate; the first head to come back wins, and the other
//! exchange is dropped, which closes its connection (a half-done exchange is never
//! pooled). Nothing reaches the client before a winner is known, so the client
//! sees one answer whatever happens.
//!
//! Hedges are paid for from a budget, as Finagle's retry budgets: each eligible
//! request earns `budget`% of a hedge, each hedge spends one, and savings fade over
//! ten seconds, so hedges stay under that share of the requests of the last ten
//! seconds or so, even when every replica is slow (when hedging would only add
//! load), while a burst of slow answers within that share is still covered. The running percentile for `--hedge pNN` comes from a window of recent
//! response times. Both are per worker thread: no lock, no atomic.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forward::{connect, Failure, Target, Worker};
use super::http1::{self, RequestInfo, ResponseInfo};
use super::pool::PoolSlot;
use super::READ_CHUNK;
use crate::backend::Backend;
use crate::policy::settings::Hedge;

/// How many recent response times the percentile is taken over.
const WINDOW: usize = 1024;

/// Samples needed before a percentile is trusted: until then, no hedging.
const MIN_SAMPLES: usize = 100;

/// How often, in samples, the percentile is recomputed.
const RECOMPUTE_EVERY: usize = 64;

/// How fast savings fade: a hedge earned this long ago is worth 1/e, so a quiet
/// spell cannot fund a burst later (Finagle's retry budgets keep deposits 10 s).
const SAVINGS_FADE: Duration = Duration::from_secs(10);

/// A worker's hedging state.
#[derive(Debug, Default)]
pub struct Hedging {
    window: RefCell<Window>,
    saved: Cell<f64>,
    /// When `saved` was last brought up to date.
    saved_at: Cell<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Window {
    samples: Vec<Duration>,
    next: usize,
    since_sorted: usize,
    /// The percentile last computed, and for which `p`.
    cached: Option<(f64, Duration)>,
}

impl Window {
    fn record(&mut self, took: Duration) {
        if self.samples.len() < WINDOW {
            self.samples.push(took);
        } else {
            self.samples[self.next] = took;
            self.next = (self.next + 1) % WINDOW;
        }
        self.since_sorted += 1;
    }

    fn percentile(&mut self, p: f64) -> Option<Duration> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        match self.cached {
            Some((q, d)) if q == p && self.since_sorted < RECOMPUTE_EVERY => Some(d),
            _ => {
                let mut sorted = self.samples.clone();
                sorted.sort_unstable();
                let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
                let d = sorted[rank.clamp(1, sorted.len()) - 1];
                self.cached = Some((p, d));
                self.since_sorted = 0;
                Some(d)
            }
        }
    }
}

impl Hedging {
    /// Records a response time, for `--hedge pNN`.
    pub fn record(&self, took: Duration) {
        self.window.borrow_mut().record(took);
    }

    /// How long to wait before hedging, if hedging now.
    pub fn delay(&self, hedge: Hedge) -> Option<Duration> {
        match hedge {
            Hedge::After(d) => Some(d),
            Hedge::Percentile(p) => self.window.borrow_mut().percentile(p),
        }
    }

    /// An eligible request at `now` earns `budget`% of a hedge; what was saved
    /// before has faded by then.
    pub fn earn(&self, budget_percent: f64, now: Instant) {
        let faded = match self.saved_at.get() {
            Some(then) => {
                let age = now.saturating_duration_since(then).as_secs_f64();
                self.saved.get() * (-age / SAVINGS_FADE.as_secs_f64()).exp()
            }
            None => 0.0,
        };
        self.saved_at.set(Some(now));
        self.saved.set(faded + budget_percent / 100.0);
    }

    /// Spends one hedge if the budget has one.
    pub fn spend(&self) -> bool {
        let saved = self.saved.get();
        if saved >= 1.0 {
            self.saved.set(saved - 1.0);
            true
        } else {
            false
        }
    }
}

/// A response head read from one replica, nothing of it sent to the client yet.
pub struct Head {
    pub upstream: TcpStream,
    /// What was read past the head (the start of the body).
    pub input: BytesMut,
    /// The head for the client: any interim (1xx) heads, then the final one.
    pub head: Vec<u8>,
    pub res: ResponseInfo,
}

/// Sends `request_head` to `to` (over a pooled connection if there is one, then a
/// fresh one if that was stale) and reads its final response head by `deadline`.
pub async fn fetch_head(
    worker: &Worker,
    to: Target<'_>,
    request_head: &[u8],
    info: &RequestInfo,
    started: Instant,
    deadline: Instant,
) -> Result<Head, Failure> {
    let mut pooled = worker.pool.checkout(to.slot, to.address, started);
    loop {
        let reused = pooled.is_some();
        let upstream = match pooled.take() {
            Some(c) => c,
            None => connect(to.address, worker.config.connect_timeout).await?,
        };
        match read_head(upstream, request_head, info, to.served_by, deadline).await {
            Err(Failure::Upstream(_)) if reused => continue,
            other => return other,
        }
    }
}

async fn read_head(
    mut upstream: TcpStream,
    request_head: &[u8],
    info: &RequestInfo,
    served_by: Option<&str>,
    deadline: Instant,
) -> Result<Head, Failure> {
    if let Err(e) = upstream.write_all(request_head).await {
        return Err(Failure::Upstream(format!("write: {e}")));
    }
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut interim = Vec::new();
    let mut head = Vec::new();
    loop {
        let parsed =
            http1::rewrite_response(&input, info.is_head, served_by, !info.keep_alive, &mut head)
                .map_err(|e| Failure::Upstream(e.to_string()))?;
        if let Some(res) = parsed {
            input.advance(res.head_len);
            if res.status == 101 {
                return Err(Failure::Upstream("switched protocols unasked".into()));
            }
            if (100..200).contains(&res.status) {
                // Informational heads go to the client with the final one.
                interim.extend_from_slice(&head);
                continue;
            }
            interim.extend_from_slice(&head);
            return Ok(Head {
                upstream,
                input,
                head: interim,
                res,
            });
        }
        input.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, upstream.read_buf(&mut input)).await {
            Ok(Ok(0)) => return Err(Failure::Upstream("closed before answering".into())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Failure::Upstream(format!("read: {e}"))),
            Err(_) => return Err(Failure::Timeout),
        }
    }
}

/// One replica's attempt at a request: its head, or why it failed.
pub type Attempt<'a> = (&'a Arc<Backend>, Result<Head, Failure>);

/// Where a request goes when it is sent to `backend`.
pub fn target(backend: &Backend) -> Target<'_> {
    Target {
        slot: PoolSlot::replica(backend.id),
        address: &backend.address,
        served_by: Some(&backend.hostname),
    }
}

/// Races `first` against a hedge to the next of `rest` if `first` has not answered
/// after `delay` and the budget allows. Returns the attempts that finished, in the
/// order they did: the last is the winner when it succeeded; an attempt still
/// running when another won is dropped, closing its connection.
pub async fn race<'a, I: Iterator<Item = &'a Arc<Backend>>>(
    worker: &Worker,
    first: &'a Arc<Backend>,
    rest: &mut std::iter::Peekable<I>,
    request_head: &[u8],
    info: &RequestInfo,
    started: Instant,
    delay: Duration,
) -> Vec<Attempt<'a>> {
    let deadline = started + worker.config.response_timeout;
    let attempt = |b: &'a Arc<Backend>| async move {
        let _in_flight = b.track();
        (
            b,
            fetch_head(worker, target(b), request_head, info, started, deadline).await,
        )
    };
    let primary = attempt(first);
    tokio::pin!(primary);
    tokio::select! {
        done = &mut primary => return vec![done],
        _ = tokio::time::sleep_until(started + delay) => {}
    }
    if rest.peek().is_none() {
        return vec![primary.await];
    }
    if !worker.hedging.spend() {
        // No budget: the next candidate stays next, for failover.
        worker.metrics.hedges_refused.inc();
        return vec![primary.await];
    }
    let second = rest.next().expect("peeked");
    worker.metrics.hedges.inc();
    let hedge = attempt(second);
    tokio::pin!(hedge);
    let mut finished = Vec::with_capacity(2);
    tokio::select! {
        done = &mut primary => finished.push(done),
        done = &mut hedge => finished.push(done),
    }
    if finished[0].1.is_err() {
        // The first to finish failed: the other may still answer.
        let other = if std::ptr::eq(finished[0].0, first) {
            hedge.await
        } else {
            primary.await
        };
        finished.push(other);
    }
    if let Some((b, Ok(_))) = finished.last() {
        if std::ptr::eq(*b, second) {
            worker.metrics.hedge_wins.inc();
        }
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_percentile_before_enough_samples_then_the_running_one() {
        let h = Hedging::default();
        for i in 1..MIN_SAMPLES as u32 {
            h.record(i * MS);
        }
        assert_eq!(h.delay(Hedge::Percentile(95.0)), None);
        h.record(100 * MS);
        assert_eq!(h.delay(Hedge::Percentile(95.0)), Some(95 * MS));
        assert_eq!(h.delay(Hedge::Percentile(50.0)), Some(50 * MS));
        assert_eq!(h.delay(Hedge::After(7 * MS)), Some(7 * MS));
    }

    #[test]
    fn the_window_forgets_old_response_times() {
        let h = Hedging::default();
        for _ in 0..WINDOW {
            h.record(500 * MS);
        }
        for _ in 0..WINDOW {
            h.record(MS);
        }
        assert_eq!(h.delay(Hedge::Percentile(99.0)), Some(MS));
    }

    #[test]
    fn hedges_stay_within_the_budget() {
        let h = Hedging::default();
        let start = Instant::now();
        let mut hedged = 0;
        // 10,000 requests over one second.
        for i in 0..10_000u32 {
            h.earn(5.0, start + i * Duration::from_micros(100));
            if h.spend() {
                hedged += 1;
            }
        }
        assert!((480..=500).contains(&hedged), "{hedged}");
        let none = Hedging::default();
        none.earn(0.0, start);
        assert!(!none.spend());
    }

    #[test]
    fn a_burst_within_the_budget_of_recent_requests_is_covered() {
        let h = Hedging::default();
        let start = Instant::now();
        for i in 0..1000u32 {
            h.earn(25.0, start + i * MS);
        }
        // A second of traffic saved about 250 hedges: 200 slow answers at once are
        // all hedged.
        let at = start + 1000 * MS;
        h.earn(25.0, at);
        let burst = (0..200).filter(|_| h.spend()).count();
        assert_eq!(burst, 200);
    }

    #[test]
    fn savings_fade_so_a_quiet_spell_cannot_fund_a_burst() {
        let h = Hedging::default();
        let start = Instant::now();
        for i in 0..1000u32 {
            h.earn(25.0, start + i * MS);
        }
        h.earn(0.0, start + Duration::from_secs(60));
        assert!(!h.spend());
    }
}
