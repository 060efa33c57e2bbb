//! A real deployment for one experiment: the `load_balancer` binary started with a
//! given scheme and runtime, on a loopback port of its choosing, under an instance and
//! network of its own so it can never touch another deployment's containers. Dropping
//! it stops the balancer and removes whatever it left behind, even after a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Who runs the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Process,
}

impl Runtime {
    /// The `--runtime` value.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Process => "process",
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Directory holding `load_balancer` (and `server` for the process runtime).
    pub bin_dir: PathBuf,
    pub runtime: Runtime,
    /// `--hash`.
    pub scheme: String,
    /// `--balance-factor`, when bounded loads are on.
    pub balance_factor: Option<f64>,
    pub replicas: usize,
    /// Distinguishes this deployment's instance, network and log file.
    pub tag: String,
    /// Where the balancer's stderr goes.
    pub log_dir: PathBuf,
    /// Further flags for the balancer (e.g. `--grpc-listen 127.0.0.1:0`).
    pub extra_args: Vec<String>,
}

/// A running balancer and its replicas.
pub struct Deployment {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The look-aside gRPC service's `HOST:PORT`, when the balancer printed one.
    pub grpc: Option<String>,
    runtime: Runtime,
    instance: String,
    agent: ureq::Agent,
}

impl Deployment {
    /// Starts the balancer and waits until `spec.replicas` replicas are healthy.
    pub fn start(spec: &Spec) -> Result<Deployment, String> {
        let instance = format!("analysis-{}", spec.tag);
        std::fs::create_dir_all(&spec.log_dir).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(spec.log_dir.join(format!("{}.log", spec.tag)))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(spec.bin_dir.join("load_balancer"));
        cmd.args(["--runtime", spec.runtime.name(), "--listen", "127.0.0.1:0"])
            .args(["--hash", &spec.scheme])
            .args(["--replicas", &spec.replicas.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(c) = spec.balance_factor {
            cmd.args(["--balance-factor", &c.to_string()]);
        }
        cmd.args(&spec.extra_args);
        match spec.runtime {
            Runtime::Docker => {
                cmd.args(["--instance", &instance, "--network", &instance])
                    .arg("--cleanup-on-exit");
            }
            Runtime::Process => {
                cmd.args(["--server-bin", &path_str(&spec.bin_dir.join("server"))]);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.bin_dir.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // The balancer prints `grpc listening on http://ADDR` (with look-aside on),
        // then `listening on http://ADDR` once everything is bound; keep draining its
        // stdout afterwards so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send((false, url.to_string()));
                } else if let Some(url) = line.strip_prefix("grpc listening on ") {
                    let _ = tx.send((true, url.to_string()));
                }
            }
        });
        let mut dep = Deployment {
            child,
            url: String::new(),
            grpc: None,
            runtime: spec.runtime,
            instance,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while dep.url.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok((true, grpc)) => {
                    dep.grpc = Some(grpc.trim_start_matches("http://").to_string());
                }
                Ok((false, url)) => dep.url = url,
                Err(_) => return Err("the balancer did not start listening within 30 s".into()),
            }
        }
        dep.wait_healthy(spec.replicas, Duration::from_secs(60))?;
        Ok(dep)
    }

    /// The balancer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /status`'s `message`.
    pub fn status(&self) -> Result<Value, String> {
        let v: Value = self
            .agent
            .get(&format!("{}/status", self.url))
            .call()
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())?;
        Ok(v["message"].clone())
    }

    /// `(hostname, state, handle)` of every replica, as `/status` lists them.
    pub fn replicas(&self) -> Result<Vec<(String, String, String)>, String> {
        let s = self.status()?;
        Ok(s["replicas"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                        (f("hostname"), f("state"), f("handle"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// How many replicas `/status` calls healthy.
    pub fn healthy(&self) -> Result<usize, String> {
        Ok(self.replicas()?.iter().filter(|r| r.1 == "healthy").count())
    }

    /// Waits until exactly `n` replicas are listed and all are healthy.
    pub fn wait_healthy(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.replicas() {
                if r.len() == n && r.iter().all(|r| r.1 == "healthy") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{n} healthy replicas not reached within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a request to the balancer: (status, body). `Err` only without an answer.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let req = self.agent.request(method, &format!("{}{path}", self.url));
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Kills a replica the hard way (`docker kill`, or SIGKILL to its pid) and
    /// returns the handle it had, so a replacement can be told apart.
    pub fn kill_replica(&self, hostname: &str) -> Result<String, String> {
        let handle = self
            .replicas()?
            .into_iter()
            .find(|r| r.0 == hostname)
            .map(|r| r.2)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{hostname} has no handle in /status"))?;
        match self.runtime {
            Runtime::Docker => docker(&["kill", &handle]).map(|_| ())?,
            Runtime::Process => {
                let pid: i32 = handle.parse().map_err(|_| format!("bad pid {handle}"))?;
                kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(|e| e.to_string())?;
            }
        }
        Ok(handle)
    }

    fn cleanup(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.runtime == Runtime::Docker {
            // Whatever --cleanup-on-exit could not remove (a crash, a timeout): only
            // this instance's label, so nothing else on the engine is touched.
            let filter = format!("label=lb.managed-by={}", self.instance);
            if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
                for id in ids.split_whitespace() {
                    let _ = docker(&["rm", "-f", id]);
                }
            }
            let _ = docker(&["network", "rm", &self.instance]);
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs `docker ARGS`; stdout, or stderr as the error.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
