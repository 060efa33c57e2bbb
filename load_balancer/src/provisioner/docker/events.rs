//! The engine's event stream, turned into replica deaths for the managed source.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures_util::StreamExt;

use super::LABEL_MANAGED_BY;
use crate::provisioner::{EventSender, ProvisionerEvent};

const MAX_EVENT_BACKOFF: Duration = Duration::from_secs(5);

/// Seconds since the epoch, as the engine stamps events.
pub(in crate::provisioner) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Follows the engine's event stream for the instance's containers and reports
/// deaths; reconnects (replaying from where it left off) when the stream ends.
/// The engine's events that say a container of `instance` died, from `since` (Unix
/// seconds) on.
pub(crate) fn deaths_since(instance: &str, since: i64) -> EventsOptions {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "label".to_string(),
            vec![format!("{LABEL_MANAGED_BY}={instance}")],
        ),
        (
            "event".to_string(),
            ["die", "oom", "kill", "destroy"].map(String::from).to_vec(),
        ),
    ]);
    EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    }
}

pub(super) async fn watch_events(
    docker: Docker,
    instance: String,
    events: EventSender,
    mut since: i64,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut stream = docker.events(Some(deaths_since(&instance, since)));
        let mut failure = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(msg) => {
                    backoff = Duration::from_millis(250);
                    if let Some(event) = death(&msg) {
                        if events.send(event).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if events.is_closed() {
            return;
        }
        match failure {
            Some(e) => log::warn!("docker event stream failed ({e}); reconnecting in {backoff:?}"),
            None => log::warn!("docker event stream ended; reconnecting in {backoff:?}"),
        }
        // Events are stamped in whole seconds: replay the last ones; a duplicate
        // death report is ignored by the managed source.
        since = unix_now() - 2;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_EVENT_BACKOFF);
    }
}

/// The death an engine event reports, if it reports one.
pub(in crate::provisioner) fn death(msg: &EventMessage) -> Option<ProvisionerEvent> {
    let actor = msg.actor.as_ref()?;
    let handle = actor.id.clone()?;
    let attrs = actor.attributes.clone().unwrap_or_default();
    let reason = match msg.action.as_deref()? {
        "die" => format!(
            "container exited with code {}",
            attrs.get("exitCode").map_or("?", String::as_str)
        ),
        "oom" => "container ran out of memory".to_string(),
        "destroy" => "container was removed".to_string(),
        // Any other signal may be handled or ignored; only SIGKILL surely kills,
        // and reporting it now saves waiting for the `die` that follows.
        "kill"
            if matches!(
                attrs.get("signal").map(String::as_str),
                Some("9" | "SIGKILL")
            ) =>
        {
            "container was killed".to_string()
        }
        _ => return None,
    };
    Some(ProvisionerEvent::Died { handle, reason })
}

/// Engine events for the tests of what reads them.
#[cfg(test)]
pub(in crate::provisioner) mod testing {
    use bollard::models::{EventActor, EventMessage};

    /// An event `action` about container `abc` with these attributes.
    pub fn event(action: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::event;
    use super::*;

    #[test]
    fn die_oom_destroy_and_sigkill_are_deaths_other_signals_are_not() {
        let died = |m: &EventMessage| death(m).map(|ProvisionerEvent::Died { handle, .. }| handle);
        assert_eq!(
            died(&event("die", &[("exitCode", "137")])),
            Some("abc".into())
        );
        assert_eq!(died(&event("oom", &[])), Some("abc".into()));
        assert_eq!(died(&event("destroy", &[])), Some("abc".into()));
        assert_eq!(died(&event("kill", &[("signal", "9")])), Some("abc".into()));
        assert_eq!(died(&event("kill", &[("signal", "15")])), None);
        assert_eq!(died(&event("start", &[])), None);
    }
}
