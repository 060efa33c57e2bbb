//! `--etcd-endpoints`: keeps the replica's entry `<prefix>/backends/<name>` in etcd
//! under a lease it keeps alive, rewrites it with the load every interval, and
//! revokes the lease on the way out so the entry goes at once. When etcd fails or
//! the lease is lost, it starts over (new lease, entry written again) after a backoff.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use serde_json::json;
use tokio::time::{timeout, MissedTickBehavior};

use super::{Advertised, Backoff, Report, Stop};
use crate::load::Load;

/// The longest one etcd operation may take, connecting included: longer, and etcd
/// is taken to be down.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the way out waits for the lease to be revoked: leaving is best
/// effort, and the lease expires anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The entry's value: where to reach the replica, and its load now.
pub fn entry(me: &Advertised, report: Report) -> String {
    json!({
        "address": me.grpc,
        "http_address": me.http,
        "load": report.load,
        "available": report.available,
    })
    .to_string()
}

/// How often the lease is kept alive: three times per TTL, so that one lost
/// keep-alive does not let it expire.
pub fn keepalive_period(ttl_s: i64) -> Duration {
    let ttl = Duration::from_secs(u64::try_from(ttl_s).unwrap_or(1).max(1));
    ttl / 3
}

/// Why a session with etcd ended before the stop.
#[derive(Debug)]
enum SessionError {
    Etcd(etcd_client::Error),
    TimedOut(&'static str),
    /// The lease expired or was revoked behind the replica's back.
    LeaseLost,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Etcd(e) => e.fmt(f),
            SessionError::TimedOut(what) => write!(f, "{what} took over {OP_TIMEOUT:?}"),
            SessionError::LeaseLost => f.write_str("the lease is gone"),
        }
    }
}

impl From<etcd_client::Error> for SessionError {
    fn from(e: etcd_client::Error) -> Self {
        SessionError::Etcd(e)
    }
}

/// `op`, given `OP_TIMEOUT` to finish.
async fn bounded<T>(
    what: &'static str,
    op: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, SessionError> {
    Ok(timeout(OP_TIMEOUT, op)
        .await
        .map_err(|_| SessionError::TimedOut(what))??)
}

/// A lease granted and kept alive over one connection.
struct Session {
    client: Client,
    lease: i64,
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
}

/// Keeps the session's lease alive one more TTL. An answer with a TTL of 0 (or
/// none) means the lease is gone.
async fn keep_alive(session: &mut Session) -> Result<(), SessionError> {
    bounded("keeping alive", session.keeper.keep_alive()).await?;
    let answer = bounded("keeping alive", session.answers.message()).await?;
    match answer {
        Some(a) if a.ttl() > 0 => Ok(()),
        _ => Err(SessionError::LeaseLost),
    }
}

/// The entry in etcd, ready to be kept.
pub struct ToEtcd {
    pub endpoints: Vec<String>,
    pub key: String,
    pub me: Advertised,
    pub ttl_s: i64,
    pub interval: Duration,
}

impl ToEtcd {
    /// Keeps the entry until `stop`, then revokes its lease.
    pub async fn run(self, load: Arc<Load>, mut stop: Stop) {
        let backoff = Backoff::default();
        let mut failures = 0u32;
        loop {
            let Err(e) = self.session(&load, &mut stop, &mut failures).await else {
                return;
            };
            // Once per outage, not at every retry.
            if failures == 0 {
                log::warn!("etcd at {:?}: {e}; starting over", self.endpoints);
            } else {
                log::debug!("etcd at {:?}: {e}", self.endpoints);
            }
            failures = failures.saturating_add(1);
            if !stop.sleep(backoff.after(failures, rand::random())).await {
                return;
            }
        }
    }

    /// Connects, grants a lease and writes the entry under it.
    async fn open(&self, load: &Load) -> Result<Session, SessionError> {
        let options = ConnectOptions::new().with_connect_timeout(OP_TIMEOUT);
        let mut client = bounded(
            "connecting",
            Client::connect(&self.endpoints, Some(options)),
        )
        .await?;
        let lease = bounded("granting a lease", client.lease_grant(self.ttl_s, None))
            .await?
            .id();
        // This sends a first keep-alive and reads its answer.
        let (keeper, answers) = bounded("keeping alive", client.lease_keep_alive(lease)).await?;
        let mut session = Session {
            client,
            lease,
            keeper,
            answers,
        };
        self.write(&mut session, load).await?;
        Ok(session)
    }

    /// Writes the entry with the load now, under the session's lease.
    async fn write(&self, session: &mut Session, load: &Load) -> Result<(), SessionError> {
        let value = entry(&self.me, Report::of(load));
        let under = Some(PutOptions::new().with_lease(session.lease));
        let put = session.client.put(self.key.as_str(), value, under);
        bounded("writing the entry", put).await.map(drop)
    }

    /// One lease's life: `Ok` once stopped (the lease revoked, best effort), `Err`
    /// when etcd failed or the lease was lost. `failures` is cleared once the entry is
    /// written.
    async fn session(
        &self,
        load: &Load,
        stop: &mut Stop,
        failures: &mut u32,
    ) -> Result<(), SessionError> {
        let mut session = tokio::select! {
            opened = self.open(load) => opened?,
            _ = stop.requested() => return Ok(()),
        };
        if *failures > 0 {
            log::info!("in etcd again as {}", self.key);
        }
        *failures = 0;
        let mut keep = tokio::time::interval(keepalive_period(self.ttl_s));
        let mut report = tokio::time::interval(self.interval);
        for ticks in [&mut keep, &mut report] {
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            // The first tick is now, and `open` has just done both.
            ticks.tick().await;
        }
        loop {
            tokio::select! {
                _ = stop.requested() => break,
                _ = keep.tick() => keep_alive(&mut session).await?,
                _ = report.tick() => self.write(&mut session, load).await?,
            }
        }
        let revoked = timeout(LEAVE_TIMEOUT, session.client.lease_revoke(session.lease));
        match revoked.await {
            Ok(Ok(_)) => log::info!("removed {} from etcd", self.key),
            Ok(Err(e)) => log::warn!("could not revoke the lease of {}: {e}", self.key),
            Err(_) => log::warn!("etcd did not revoke the lease of {} in time", self.key),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_the_addresses_and_the_load_as_json() {
        let me = Advertised {
            name: "r1".into(),
            grpc: "127.0.0.1:7001".into(),
            http: "127.0.0.1:8001".into(),
        };
        let value: serde_json::Value =
            serde_json::from_str(&entry(&me, Report::new(3, false))).unwrap();
        assert_eq!(
            value,
            json!({"address": "127.0.0.1:7001", "http_address": "127.0.0.1:8001",
                   "load": 3, "available": false})
        );
    }

    #[test]
    fn the_lease_is_kept_alive_three_times_per_ttl() {
        assert_eq!(keepalive_period(6), Duration::from_secs(2));
        assert_eq!(keepalive_period(1).as_millis(), 333);
        assert_eq!(keepalive_period(0).as_millis(), 333);
    }
}
