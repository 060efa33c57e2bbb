//! Starting one replica until it answers, and the pause before trying again. Runs in
//! tasks of its own: the managed source never waits for it.

use std::time::Duration;

use crate::health::Health;
use crate::provisioner::{ProvisionError, Provisioner, ReplicaSpec, Running};

/// The longest wait before another respawn attempt.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a replica could not be brought up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The provisioner could not start it.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// It started but never answered its heartbeat; it was stopped again.
    #[error("{hostname} did not answer /heartbeat within {within:?}")]
    NotReady { hostname: String, within: Duration },
}

/// The delay before respawn attempt number `streak` (0 = the first, immediate).
pub fn backoff(streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    let ms = 250u64.saturating_mul(1u64 << (streak - 1).min(16));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

/// Starts a replica and waits until it answers; a replica that never answers is
/// stopped again, so a failed launch leaves nothing behind. `stale`, a dead earlier
/// incarnation, is cleaned up first (a container keeps its name until removed).
pub async fn launch(
    provisioner: &dyn Provisioner,
    health: &dyn Health,
    spec: &ReplicaSpec,
    stale: Option<Running>,
    within: Duration,
) -> Result<Running, LaunchError> {
    if let Some(old) = stale {
        if let Err(e) = provisioner.stop(&old, Duration::ZERO).await {
            log::warn!("cleaning up the old {}: {e}", old.hostname);
        }
    }
    let running = provisioner.start(spec).await?;
    wait_ready(provisioner, health, running, within).await
}

/// Waits for a started (or adopted) replica to answer; stops it if it never does.
pub async fn wait_ready(
    provisioner: &dyn Provisioner,
    health: &dyn Health,
    running: Running,
    within: Duration,
) -> Result<Running, LaunchError> {
    if health.wait_ready(&running.address, within).await {
        return Ok(running);
    }
    let _ = provisioner.stop(&running, Duration::ZERO).await;
    Err(LaunchError::NotReady {
        hostname: running.hostname,
        within,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_respawn_is_immediate_and_later_ones_back_off_to_a_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
