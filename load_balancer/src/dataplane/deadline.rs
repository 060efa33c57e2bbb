//! A lazily armed timer for a connection's deadlines.

use std::future::Future;
use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// A timer armed lazily. Each request moves a connection's deadlines later; doing
/// that on the timer wheel for every request costs more than the rest of the
/// routing, so a later deadline is only recorded, and the timer, when it fires
/// early, re-arms itself for it. An earlier deadline re-arms at once.
pub struct Deadline {
    sleep: Pin<Box<Sleep>>,
    due: Instant,
}

impl Deadline {
    /// A timer due at `due`.
    pub fn new(due: Instant) -> Self {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(due)),
            due,
        }
    }

    /// Moves the deadline to `due`, later or earlier.
    pub fn set(&mut self, due: Instant) {
        if due < self.sleep.deadline() {
            self.sleep.as_mut().reset(due);
        }
        self.due = due;
    }

    /// Runs `work` to completion (`Some`), or until the deadline passes (`None`).
    pub async fn run<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return Some(out),
                _ = self.sleep.as_mut() => {
                    // Fired at its own deadline: past ours unless ours moved later.
                    if self.sleep.deadline() >= self.due {
                        return None;
                    }
                    let due = self.due;
                    self.sleep.as_mut().reset(due);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_in_time_is_returned() {
        let mut d = Deadline::new(Instant::now() + 100 * MS);
        let out = d.run(async {
            tokio::time::sleep(50 * MS).await;
            7
        });
        assert_eq!(out.await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_outlasts_the_deadline_is_cut_off_at_it() {
        let start = Instant::now();
        let mut d = Deadline::new(start + 100 * MS);
        assert_eq!(d.run(std::future::pending::<()>()).await, None);
        assert_eq!(start.elapsed(), 100 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_is_honoured_without_rearming_at_once() {
        let start = Instant::now();
        let mut d = Deadline::new(start + 100 * MS);
        d.set(start + 300 * MS);
        // The timer still fires at 100 ms, finds the deadline moved and re-arms.
        assert_eq!(d.sleep.deadline(), start + 100 * MS);
        assert_eq!(d.run(std::future::pending::<()>()).await, None);
        assert_eq!(start.elapsed(), 300 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_rearms_at_once() {
        let start = Instant::now();
        let mut d = Deadline::new(start + 300 * MS);
        d.set(start + 100 * MS);
        assert_eq!(d.run(std::future::pending::<()>()).await, None);
        assert_eq!(start.elapsed(), 100 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_set_after_the_timer_fired_unused_still_counts_in_full() {
        let start = Instant::now();
        let mut d = Deadline::new(start + 100 * MS);
        tokio::time::sleep(200 * MS).await;
        // The timer's own deadline has passed while nothing ran under it.
        d.set(Instant::now() + 100 * MS);
        let out = d.run(async {
            tokio::time::sleep(80 * MS).await;
            "done"
        });
        assert_eq!(out.await, Some("done"));
        assert_eq!(d.run(std::future::pending::<()>()).await, None);
        assert_eq!(start.elapsed(), 300 * MS);
    }
}
