//! The `process` runtime: each replica is a `server` child process on loopback.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{EventSender, ProvisionError, Provisioner, ProvisionerEvent, ReplicaSpec, Running};

/// How long a child may take to say where it listens.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs replicas as child processes of the balancer.
pub struct ProcessProvisioner {
    server_bin: PathBuf,
    events: EventSender,
    /// pid -> becomes true when the child has exited.
    exits: Arc<Mutex<HashMap<u32, watch::Receiver<bool>>>>,
}

impl ProcessProvisioner {
    /// A runtime that starts `server_bin` and reports deaths on `events`.
    pub fn new(server_bin: PathBuf, events: EventSender) -> Self {
        ProcessProvisioner {
            server_bin,
            events,
            exits: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn spawn_child(&self, spec: &ReplicaSpec) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.server_bin);
        cmd.env("SERVER_ID", &spec.hostname)
            .arg("--listen")
            // Port 0: the child binds a free port itself and prints it, so two
            // replicas can never race for the same port.
            .arg("127.0.0.1:0")
            // The look-aside `BackendService`, so `GetBestServer` can name it.
            .arg("--grpc-listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false);
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs in the forked child before exec and only makes
        // prctl(2), an async-signal-safe system call.
        unsafe {
            // A balancer killed with SIGKILL must not leave orphans behind.
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        cmd.spawn()
    }
}

#[async_trait]
impl Provisioner for ProcessProvisioner {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn discover(&self) -> Result<Vec<Running>, ProvisionError> {
        // Children die with the balancer, so there is never anything to adopt.
        Ok(Vec::new())
    }

    async fn start(&self, spec: &ReplicaSpec) -> Result<Running, ProvisionError> {
        let fail = |reason: String| ProvisionError::Start {
            hostname: spec.hostname.clone(),
            reason,
        };
        let mut child = self
            .spawn_child(spec)
            .map_err(|e| fail(format!("{}: {e}", self.server_bin.display())))?;
        let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        // It says where gRPC listens first, then HTTP.
        let mut grpc_address = None;
        let address = tokio::time::timeout(LAUNCH_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.trim();
                if let Some(addr) = line.strip_prefix("grpc listening on http://") {
                    grpc_address = Some(addr.to_string());
                } else if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Some(addr.to_string());
                }
            }
            None
        })
        .await;
        let address = match address {
            Ok(Some(a)) => a,
            other => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(fail(match other {
                    Ok(_) => "exited before it listened".into(),
                    Err(_) => format!("did not listen within {LAUNCH_TIMEOUT:?}"),
                }));
            }
        };
        let (exited_tx, exited_rx) = watch::channel(false);
        lock(&self.exits).insert(pid, exited_rx);
        let events = self.events.clone();
        let exits = self.exits.clone();
        let handle = pid.to_string();
        let hostname = spec.hostname.clone();
        tokio::spawn({
            let handle = handle.clone();
            async move {
                // Keep draining stdout so the child never blocks on a full pipe.
                let drain = async { while let Ok(Some(_)) = lines.next_line().await {} };
                let (status, _) = tokio::join!(child.wait(), drain);
                let reason = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                log::debug!("{hostname} (pid {handle}) ended: {reason}");
                // A poisoned lock must not keep the death from being reported.
                lock(&exits).remove(&pid);
                let _ = exited_tx.send(true);
                let _ = events.send(ProvisionerEvent::Died { handle, reason });
            }
        });
        Ok(Running {
            hostname: spec.hostname.clone(),
            id: spec.id,
            address,
            grpc_address,
            handle,
        })
    }

    async fn stop(&self, replica: &Running, grace: Duration) -> Result<(), ProvisionError> {
        let Ok(pid) = replica.handle.parse::<u32>() else {
            return Err(ProvisionError::Other(format!(
                "not a pid: {}",
                replica.handle
            )));
        };
        let exited = lock(&self.exits).remove(&pid);
        let Some(mut exited) = exited else {
            return Ok(());
        };
        let target = Pid::from_raw(pid as i32);
        let _ = kill(target, Signal::SIGTERM);
        let graceful = tokio::time::timeout(grace, exited.wait_for(|e| *e))
            .await
            .is_ok();
        if !graceful {
            log::warn!(
                "{} did not exit after SIGTERM; killing it",
                replica.hostname
            );
            let _ = kill(target, Signal::SIGKILL);
            let _ = exited.wait_for(|e| *e).await.map(|_| ());
        }
        Ok(())
    }

    async fn shutdown(&self, replicas: &[Running]) {
        let stops = replicas
            .iter()
            .map(|r| self.stop(r, Duration::from_secs(5)));
        futures_util::future::join_all(stops).await;
    }
}

/// The exit watchers, even if a panic elsewhere poisoned their lock: a replica's
/// death must be reported whatever happened to another task.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_gives_its_contents() {
        let m = Arc::new(Mutex::new(HashMap::from([(1u32, "a")])));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poisons the lock");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(lock(&m).remove(&1), Some("a"));
    }
}
