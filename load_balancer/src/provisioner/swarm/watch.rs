//! Hearing of replica deaths: this engine's container events (milliseconds, but only
//! for tasks on this node) and a poll of the tasks API (every node, within a poll
//! interval). Each death of a handed-out task is reported once, whichever sees it first.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{EventMessage, Task};
use bollard::query_parameters::{ListServicesOptions, ListTasksOptions};
use bollard::Docker;
use futures_util::StreamExt;

use super::tasks::deaths;
use super::tracker::Tracker;
use crate::provisioner::docker::events::{death, deaths_since, unix_now};
use crate::provisioner::docker::LABEL_MANAGED_BY;
use crate::provisioner::{EventSender, ProvisionerEvent};

/// How often the tasks API is asked, for deaths the event stream cannot see.
const POLL_EVERY: Duration = Duration::from_millis(500);
const MAX_EVENT_BACKOFF: Duration = Duration::from_secs(5);
/// The label Swarm puts on a task's container: the task id, our replica handle.
const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";

/// Reports `task`'s death unless already reported; false once nobody listens.
fn report(tracker: &Mutex<Tracker>, events: &EventSender, task: &str, reason: String) -> bool {
    let news = tracker
        .lock()
        .expect("tracker lock")
        .died(task, Instant::now());
    if news {
        log::debug!("task {task} ended: {reason}");
        let event = ProvisionerEvent::Died {
            handle: task.to_string(),
            reason,
        };
        return events.send(event).is_ok();
    }
    !events.is_closed()
}

/// The task whose container an engine event reports dead, with why.
fn task_death(msg: &EventMessage) -> Option<(String, String)> {
    let ProvisionerEvent::Died { reason, .. } = death(msg)?;
    let attrs = msg.actor.as_ref()?.attributes.as_ref()?;
    Some((attrs.get(TASK_ID_LABEL)?.clone(), reason))
}

/// Follows this engine's container events for the instance's task containers;
/// reconnects (replaying the last seconds) when the stream ends.
pub(super) async fn watch_events(
    docker: Docker,
    instance: String,
    tracker: Arc<Mutex<Tracker>>,
    events: EventSender,
) {
    let mut since = unix_now() - 1;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut stream = docker.events(Some(deaths_since(&instance, since)));
        let mut failure = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(msg) => {
                    backoff = Duration::from_millis(250);
                    // Containers of the same instance run by the docker runtime
                    // carry no task id: not ours to report.
                    if let Some((task, reason)) = task_death(&msg) {
                        if !report(&tracker, &events, &task, reason) {
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
        since = unix_now() - 2;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_EVENT_BACKOFF);
    }
}

/// Asks the tasks API about every handed-out task's service each [`POLL_EVERY`]
/// and reports those that ended, wherever they ran, and those whose service is gone.
pub(super) async fn poll_tasks(
    docker: Docker,
    instance: String,
    tracker: Arc<Mutex<Tracker>>,
    events: EventSender,
) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if events.is_closed() {
            return;
        }
        // Taken before the listings: a service created after it hands out nothing
        // this round, so a listing never misses a task this round judges.
        let handed = {
            let mut t = tracker.lock().expect("tracker lock");
            t.prune(Instant::now());
            t.handed()
        };
        if handed.is_empty() {
            continue;
        }
        let listing = match list(&docker, &instance, &handed).await {
            Ok(l) => l,
            Err(e) => {
                // e.g. a service removed between the two listings: next round.
                log::debug!("listing tasks: {e}");
                continue;
            }
        };
        for (task, reason) in deaths(&handed, &listing) {
            if !report(&tracker, &events, &task, reason) {
                return;
            }
        }
    }
}

/// The tasks of the handed-out tasks' services that still exist. The tasks API
/// refuses a whole listing that names a removed service, so the instance's services
/// are listed first; the tasks of a removed one are simply not in the answer.
async fn list(
    docker: &Docker,
    instance: &str,
    handed: &[(String, String)],
) -> Result<Vec<Task>, bollard::errors::Error> {
    let opts = ListServicesOptions {
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_MANAGED_BY}={instance}")],
        )])),
        ..Default::default()
    };
    let existing: BTreeSet<String> = docker
        .list_services(Some(opts))
        .await?
        .into_iter()
        .filter_map(|s| s.id)
        .collect();
    let services: Vec<String> = handed
        .iter()
        .map(|(_, s)| s)
        .filter(|s| existing.contains(*s))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let opts = ListTasksOptions {
        filters: Some(HashMap::from([("service".to_string(), services)])),
    };
    docker.list_tasks(Some(opts)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provisioner::docker::events::testing::event;

    #[test]
    fn a_task_containers_death_names_the_task_not_the_container() {
        let died = event("die", &[(TASK_ID_LABEL, "task-1"), ("exitCode", "137")]);
        let (task, reason) = task_death(&died).expect("a death");
        assert_eq!(task, "task-1");
        assert!(reason.contains("137"), "{reason}");
        assert_eq!(task_death(&event("die", &[("exitCode", "0")])), None);
        assert_eq!(task_death(&event("start", &[(TASK_ID_LABEL, "t")])), None);
    }
}
