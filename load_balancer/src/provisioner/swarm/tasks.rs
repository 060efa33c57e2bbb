//! Reading Swarm's tasks: which one is a service's current, running task, where it
//! was published, and whether one the balancer relies on has ended. Pure.

use bollard::models::{EndpointPortConfigPublishModeEnum, Task, TaskState};

/// The task's state as its node last reported it.
fn state(t: &Task) -> Option<TaskState> {
    t.status.as_ref().and_then(|s| s.state)
}

/// Whether the task runs and Swarm means it to keep running.
pub(super) fn is_running(t: &Task) -> bool {
    state(t) == Some(TaskState::RUNNING) && t.desired_state == Some(TaskState::RUNNING)
}

/// Why a task that was running is over, or `None` while it still is. It is over once
/// its node says it stopped (`complete`, `failed`, `shutdown`, …) or once Swarm has
/// decided to stop it (desired state `shutdown`), whichever is heard first.
pub(super) fn ended(t: &Task) -> Option<String> {
    let s = state(t)?;
    if s > TaskState::RUNNING {
        let status = t.status.as_ref();
        let detail = status
            .and_then(|s| s.err.clone().filter(|e| !e.is_empty()))
            .or_else(|| status.and_then(|s| s.message.clone()))
            .unwrap_or_default();
        return Some(format!("task {s}: {detail}"));
    }
    match t.desired_state {
        Some(d) if d > TaskState::RUNNING => Some(format!("task is being stopped ({d})")),
        _ => None,
    }
}

/// The running task of service `service_id` to hand out, skipping those known dead
/// (the tasks API may still call a task running a moment after its container died).
pub(super) fn current<'a>(
    tasks: &'a [Task],
    service_id: &str,
    dead: impl Fn(&str) -> bool,
) -> Option<&'a Task> {
    tasks.iter().find(|t| {
        t.service_id.as_deref() == Some(service_id)
            && is_running(t)
            && t.id.as_deref().is_some_and(|id| !dead(id))
    })
}

/// How many of a service's tasks Swarm must have rejected before a start stops
/// waiting for one to run.
const REJECTIONS: usize = 3;

/// Why the service's tasks cannot run, once Swarm has refused to even start them
/// ([`REJECTIONS`] tasks `rejected`: e.g. no such image on the node). Swarm keeps
/// trying with new tasks forever; a start need not wait it out.
pub(super) fn rejection(tasks: &[Task], service_id: &str) -> Option<String> {
    let mut rejected = tasks.iter().filter(|t| {
        t.service_id.as_deref() == Some(service_id) && state(t) == Some(TaskState::REJECTED)
    });
    let why = rejected.next()?.status.as_ref()?.err.clone();
    (rejected.count() + 1 >= REJECTIONS).then_some(why?)
}

/// Where the service's next task stands, to say why a start is taking long:
/// `preparing`, `pending: no suitable node`, or that there is none yet.
pub(super) fn progress(tasks: &[Task], service_id: &str) -> String {
    let next = tasks.iter().find(|t| {
        t.service_id.as_deref() == Some(service_id)
            && matches!(t.desired_state, Some(TaskState::READY | TaskState::RUNNING))
    });
    let Some(status) = next.and_then(|t| t.status.as_ref()) else {
        return "no task is scheduled".into();
    };
    let state = status.state.map_or("unknown".into(), |s| s.to_string());
    match status.err.as_deref().filter(|e| !e.is_empty()) {
        Some(err) => format!("its task is {state}: {err}"),
        None => format!("its task is {state}"),
    }
}

/// The node port `target` was published on in `host` mode, from the task's status.
pub(super) fn published_port(t: &Task, target: u16) -> Option<u16> {
    let ports = t.status.as_ref()?.port_status.as_ref()?.ports.as_ref()?;
    ports
        .iter()
        .filter(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST))
        .find(|p| p.target_port == Some(i64::from(target)))
        .and_then(|p| u16::try_from(p.published_port?).ok())
        .filter(|p| *p != 0)
}

/// The deaths among `handed` (task id, service id) that a listing of their services'
/// tasks shows: each one ended, or missing (its service was removed), with why.
pub(super) fn deaths(handed: &[(String, String)], listing: &[Task]) -> Vec<(String, String)> {
    handed
        .iter()
        .filter_map(|(task, _)| {
            let reason = match listing.iter().find(|t| t.id.as_ref() == Some(task)) {
                Some(t) => ended(t)?,
                None => "the task is gone (its service was removed)".to_string(),
            };
            Some((task.clone(), reason))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{EndpointPortConfig, PortStatus, TaskStatus};

    fn task(id: &str, service: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            id: Some(id.into()),
            service_id: Some(service.into()),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn published(mut t: Task, ports: &[(i64, i64)]) -> Task {
        let ports = ports
            .iter()
            .map(|&(target, published)| EndpointPortConfig {
                target_port: Some(target),
                published_port: Some(published),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            })
            .collect();
        t.status.as_mut().unwrap().port_status = Some(PortStatus { ports: Some(ports) });
        t
    }

    use TaskState::*;

    #[test]
    fn the_current_task_runs_is_meant_to_and_is_not_known_dead() {
        let tasks = [
            task("old", "s1", FAILED, SHUTDOWN),
            task("lagging", "s1", RUNNING, RUNNING),
            task("other", "s2", RUNNING, RUNNING),
            task("new", "s1", RUNNING, RUNNING),
            task("next", "s1", PREPARING, RUNNING),
        ];
        let id = |t: Option<&Task>| t.and_then(|t| t.id.clone());
        assert_eq!(id(current(&tasks, "s1", |_| false)), Some("lagging".into()));
        assert_eq!(
            id(current(&tasks, "s1", |t| t == "lagging")),
            Some("new".into()),
            "a task whose container died is skipped even while the API lags"
        );
        assert_eq!(id(current(&tasks, "s3", |_| false)), None);
        let starting = [task("t", "s1", STARTING, RUNNING)];
        assert_eq!(id(current(&starting, "s1", |_| false)), None);
    }

    #[test]
    fn a_task_has_ended_when_it_stopped_or_swarm_is_stopping_it() {
        assert_eq!(ended(&task("t", "s", RUNNING, RUNNING)), None);
        assert_eq!(ended(&task("t", "s", STARTING, RUNNING)), None);
        let mut failed = task("t", "s", FAILED, SHUTDOWN);
        failed.status.as_mut().unwrap().err = Some("task: non-zero exit (137)".into());
        assert_eq!(
            ended(&failed).as_deref(),
            Some("task failed: task: non-zero exit (137)")
        );
        assert!(ended(&task("t", "s", SHUTDOWN, SHUTDOWN)).is_some());
        assert!(ended(&task("t", "s", RUNNING, SHUTDOWN)).is_some());
        assert!(ended(&task("t", "s", RUNNING, REMOVE)).is_some());
    }

    #[test]
    fn the_published_port_is_read_from_the_task_status() {
        let t = published(
            task("t", "s", RUNNING, RUNNING),
            &[(5000, 30001), (50051, 30002)],
        );
        assert_eq!(published_port(&t, 5000), Some(30001));
        assert_eq!(published_port(&t, 50051), Some(30002));
        assert_eq!(published_port(&t, 8080), None);
        let unassigned = published(task("t", "s", RUNNING, RUNNING), &[(5000, 0)]);
        assert_eq!(published_port(&unassigned, 5000), None);
        assert_eq!(
            published_port(&task("t", "s", RUNNING, RUNNING), 5000),
            None
        );
    }

    #[test]
    fn a_start_gives_up_once_swarm_rejected_the_task_three_times() {
        let rejected = |id: &str| {
            let mut t = task(id, "s", REJECTED, SHUTDOWN);
            t.status.as_mut().unwrap().err = Some("No such image: x".into());
            t
        };
        let mut tasks = vec![
            rejected("a"),
            rejected("b"),
            task("c", "s", ASSIGNED, RUNNING),
        ];
        assert_eq!(rejection(&tasks, "s"), None, "Swarm may still make it");
        tasks.push(rejected("d"));
        assert_eq!(rejection(&tasks, "s").as_deref(), Some("No such image: x"));
        assert_eq!(rejection(&tasks, "other"), None);
        let failed = [
            task("a", "s", FAILED, SHUTDOWN),
            task("b", "s", FAILED, SHUTDOWN),
            task("c", "s", FAILED, SHUTDOWN),
        ];
        assert_eq!(
            rejection(&failed, "s"),
            None,
            "crashes are the heartbeat's business"
        );
    }

    #[test]
    fn a_slow_start_says_where_the_next_task_stands() {
        let mut pending = task("p", "s", PENDING, RUNNING);
        pending.status.as_mut().unwrap().err = Some("no suitable node".into());
        let tasks = [task("old", "s", FAILED, SHUTDOWN), pending];
        assert_eq!(
            progress(&tasks, "s"),
            "its task is pending: no suitable node"
        );
        assert_eq!(progress(&tasks[..1], "s"), "no task is scheduled");
    }

    #[test]
    fn deaths_are_handed_tasks_that_ended_or_vanished() {
        let handed = [
            ("alive".to_string(), "s1".to_string()),
            ("killed".to_string(), "s2".to_string()),
            ("removed".to_string(), "s3".to_string()),
        ];
        let listing = [
            task("alive", "s1", RUNNING, RUNNING),
            task("killed", "s2", FAILED, SHUTDOWN),
            task("replacement", "s2", RUNNING, RUNNING),
        ];
        let dead: Vec<String> = deaths(&handed, &listing)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(dead, ["killed", "removed"]);
    }
}
