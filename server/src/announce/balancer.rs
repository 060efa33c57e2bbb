//! `--register-with`: registers with a balancer's gRPC `LoadBalancer`, reports the
//! load every interval, registers again whenever the balancer has lost it (it
//! restarted, was down, or expired the replica), and deregisters on the way out.

use std::sync::Arc;
use std::time::Duration;

use lb_proto::load_balancer_client::LoadBalancerClient;
use lb_proto::{ServerInfo, ServerLoad};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{Advertised, AnnounceError, Backoff, HostPort, Report, Stop};
use crate::load::Load;

/// The longest a call to the balancer may take, connecting included: a balancer that
/// does not answer in that time is as good as down.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the way out waits for `DeregisterServer`: leaving is best effort, and
/// the balancer expires a silent replica anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the replica stands with the balancer, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Unregistered,
    Registered,
}

/// How the last call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// `NOT_FOUND`: the balancer does not know this replica (any more).
    NotFound,
    /// Anything else: the balancer is down, unreachable or failing.
    Failed,
}

impl Outcome {
    fn of(result: &Result<(), Status>) -> Outcome {
        match result {
            Ok(()) => Outcome::Done,
            Err(s) if s.code() == Code::NotFound => Outcome::NotFound,
            Err(_) => Outcome::Failed,
        }
    }
}

/// What to do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub phase: Phase,
    /// Calls in a row that did not end in a report taken.
    pub failures: u32,
    /// Before the next call.
    pub wait: Duration,
}

/// The step after a call made in `phase`, with `failures` before it. Only a report
/// taken clears the failures, so a balancer that takes registrations and then
/// forgets them is not called in a tight loop.
pub fn next(
    phase: Phase,
    failures: u32,
    outcome: Outcome,
    interval: Duration,
    backoff: Backoff,
    jitter: f64,
) -> Next {
    match (phase, outcome) {
        // Report at once, so that the balancer has a load from the start.
        (Phase::Unregistered, Outcome::Done) => Next {
            phase: Phase::Registered,
            failures,
            wait: Duration::ZERO,
        },
        (Phase::Registered, Outcome::Done) => Next {
            phase: Phase::Registered,
            failures: 0,
            wait: interval,
        },
        // Forgotten: register again, at once unless it keeps happening.
        (_, Outcome::NotFound) => Next {
            phase: Phase::Unregistered,
            failures: failures.saturating_add(1),
            wait: backoff.after(failures, jitter),
        },
        // Register first when it answers again: a balancer that was down may have
        // restarted without its registrations, and registering again is harmless.
        (_, Outcome::Failed) => Next {
            phase: Phase::Unregistered,
            failures: failures.saturating_add(1),
            wait: backoff.after(failures.saturating_add(1), jitter),
        },
    }
}

/// Registration with one balancer, ready to run.
pub struct ToBalancer {
    /// `host:port`, for the logs.
    balancer: String,
    endpoint: Endpoint,
    me: Advertised,
    interval: Duration,
}

impl ToBalancer {
    /// For the balancer at `balancer`, reporting every `interval`.
    pub fn new(
        balancer: &HostPort,
        me: Advertised,
        interval: Duration,
    ) -> Result<Self, AnnounceError> {
        let endpoint = Endpoint::from_shared(format!("http://{balancer}"))
            .map_err(|e| AnnounceError::BadBalancer(e.to_string()))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        Ok(ToBalancer {
            balancer: balancer.to_string(),
            endpoint,
            me,
            interval,
        })
    }

    /// A client on a new channel: after a failure the old one may hold a dead
    /// connection, and dialling anew is cheap next to the backoff.
    fn client(&self) -> LoadBalancerClient<Channel> {
        LoadBalancerClient::new(self.endpoint.connect_lazy())
    }

    fn info(&self) -> ServerInfo {
        ServerInfo {
            address: self.me.grpc.clone(),
            name: self.me.name.clone(),
            http_address: self.me.http.clone(),
        }
    }

    /// The call `phase` asks for: register, or report the load now.
    async fn call(
        &self,
        client: &mut LoadBalancerClient<Channel>,
        phase: Phase,
        load: &Load,
    ) -> Result<(), Status> {
        match phase {
            Phase::Unregistered => client.register_server(self.info()).await.map(drop),
            Phase::Registered => {
                let report = Report::of(load);
                let load = ServerLoad {
                    address: self.me.grpc.clone(),
                    load: report.load,
                    available: report.available,
                };
                client.report_load(load).await.map(drop)
            }
        }
    }

    /// Registers and reports until `stop`, then deregisters.
    pub async fn run(self, load: Arc<Load>, mut stop: Stop) {
        let at = &self.balancer;
        let backoff = Backoff::default();
        let mut client = self.client();
        let (mut phase, mut failures) = (Phase::Unregistered, 0);
        loop {
            let result = tokio::select! {
                result = self.call(&mut client, phase, &load) => result,
                _ = stop.requested() => break,
            };
            let outcome = Outcome::of(&result);
            match (&result, phase) {
                (Ok(()), Phase::Unregistered) => {
                    log::info!("registered with the balancer at {at} as {}", self.me.grpc)
                }
                // Once per outage, not at every retry.
                (Err(e), _) if failures == 0 => {
                    log::warn!("the balancer at {at}: {e}; registering again")
                }
                (Err(e), _) => log::debug!("the balancer at {at}: {e}"),
                (Ok(()), Phase::Registered) => {}
            }
            if outcome == Outcome::Failed {
                client = self.client();
            }
            let step = next(
                phase,
                failures,
                outcome,
                self.interval,
                backoff,
                rand::random(),
            );
            (phase, failures) = (step.phase, step.failures);
            if !stop.sleep(step.wait).await {
                break;
            }
        }
        let left = tokio::time::timeout(LEAVE_TIMEOUT, client.deregister_server(self.info()));
        match left.await {
            Ok(Ok(_)) => log::info!("deregistered from the balancer at {at}"),
            Ok(Err(e)) => log::warn!("could not deregister from the balancer at {at}: {e}"),
            Err(_) => log::warn!("the balancer at {at} did not answer DeregisterServer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(1);

    fn step(phase: Phase, failures: u32, outcome: Outcome) -> Next {
        next(phase, failures, outcome, INTERVAL, Backoff::default(), 1.0)
    }

    #[test]
    fn once_registered_it_reports_at_once_then_every_interval() {
        let registered = step(Phase::Unregistered, 0, Outcome::Done);
        assert_eq!(registered.phase, Phase::Registered);
        assert_eq!(registered.wait, Duration::ZERO);
        let reported = step(Phase::Registered, 0, Outcome::Done);
        assert_eq!(
            reported,
            Next {
                phase: Phase::Registered,
                failures: 0,
                wait: INTERVAL
            }
        );
    }

    #[test]
    fn a_report_answered_not_found_registers_again_at_once_the_first_time() {
        let forgotten = step(Phase::Registered, 0, Outcome::NotFound);
        assert_eq!(forgotten.phase, Phase::Unregistered);
        assert_eq!(forgotten.wait, Duration::ZERO);
        assert_eq!(forgotten.failures, 1);
    }

    #[test]
    fn a_balancer_that_keeps_forgetting_is_backed_off_from() {
        let mut phase = Phase::Unregistered;
        let mut failures = 0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let s = step(phase, failures, Outcome::Done);
            let s = step(s.phase, s.failures, Outcome::NotFound);
            (phase, failures) = (s.phase, s.failures);
            waits.push(s.wait.as_millis());
        }
        assert_eq!(waits, [0, 100, 200, 400]);
    }

    #[test]
    fn a_failure_backs_off_and_registers_first_when_the_balancer_answers_again() {
        let first = step(Phase::Registered, 0, Outcome::Failed);
        assert_eq!(first.phase, Phase::Unregistered);
        assert_eq!(first.wait, Duration::from_millis(100));
        let second = step(first.phase, first.failures, Outcome::Failed);
        assert_eq!(second.wait, Duration::from_millis(200));
        let back = step(second.phase, second.failures, Outcome::Done);
        assert_eq!(back.phase, Phase::Registered);
        let reported = step(back.phase, back.failures, Outcome::Done);
        assert_eq!(reported.failures, 0);
    }

    #[test]
    fn not_found_is_told_apart_from_other_failures() {
        assert_eq!(Outcome::of(&Ok(())), Outcome::Done);
        assert_eq!(
            Outcome::of(&Err(Status::not_found("who?"))),
            Outcome::NotFound
        );
        assert_eq!(
            Outcome::of(&Err(Status::unavailable("down"))),
            Outcome::Failed
        );
    }
}
