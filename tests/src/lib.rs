//! Helpers for end-to-end tests: start the real binaries, talk HTTP to them, poll
//! with deadlines, and clean up even when a test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// A binary of the workspace, built by `cargo build --workspace` before the tests
/// (`make test` does that). `E2E_PROFILE` picks `debug` (default) or `release`.
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = std::env::var("E2E_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (make test does)",
        path.display()
    );
    path
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            // Generous: admin calls queue behind each other, and Docker is slow.
            .timeout(Duration::from_secs(180))
            .build()
    })
}

/// Sends a request; `Err` only when no HTTP answer came back at all.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply, String> {
    let mut req = agent().request(method, url);
    for (n, v) in headers {
        req = req.set(n, v);
    }
    let res = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let res = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = res.status();
    let headers = res
        .headers_names()
        .into_iter()
        .filter_map(|n| Some((n.clone(), res.header(&n)?.to_string())))
        .collect();
    let mut body = String::new();
    res.into_reader()
        .read_to_string(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A running binary that prints `listening on http://ADDR` on stdout when ready.
/// Dropping it sends SIGTERM, then SIGKILL if it does not exit in time.
pub struct Service {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Service {
    /// Starts `bin` with `args` and `env`, and waits for its listening line.
    pub fn start(bin: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("{} did not say where it listens", bin.display())
            });
        Service {
            child: Some(child),
            base: format!("http://{addr}"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `GET base+path`.
    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None)
    }

    /// A request with an optional body; panics when no answer comes back.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.try_send(method, path, &[], body.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request with headers; `Err` when no answer comes back.
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, String> {
        request(method, &format!("{}{path}", self.base), headers, body)
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn stop_with(
        &mut self,
        signal: Signal,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(15));
    }
}

/// The balancer's `/status` replicas as (hostname, state, restarts, handle).
pub fn replicas(lb: &Service) -> Vec<Value> {
    lb.get("/status").json()["message"]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The `/rep` replica names.
pub fn rep_names(lb: &Service) -> Vec<String> {
    let v = lb.get("/rep").json();
    v["message"]["replicas"]
        .as_array()
        .expect("replicas list")
        .iter()
        .map(|n| n.as_str().expect("name").to_string())
        .collect()
}

/// Waits until `n` replicas are healthy.
pub fn wait_healthy(lb: &Service, n: usize, timeout: Duration) {
    poll(&format!("{n} healthy replicas"), timeout, || {
        let r = replicas(lb);
        (r.len() == n && r.iter().all(|r| r["state"] == "healthy")).then_some(())
    });
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}
pub mod browser;
pub mod docker;

/// A client generated from the seeds' proto text alone (`tests/proto/seed.proto`,
/// copied from SPEC.md), as a client written against that text would be.
pub mod seed {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("loadbalancer");
}
pub mod etcd;
pub mod smuggling;
pub mod swarm;

/// Steady background traffic: `GET /home` from a few threads until stopped (or a
/// time limit), counting answers that were 200 and those that were not.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `threads` clients against `base`, each stopping after `limit` at most.
    pub fn start(base: &str, threads: usize, limit: Duration) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let url = format!("{base}/home");
                std::thread::spawn(move || {
                    let deadline = Instant::now() + limit;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match request("GET", &url, &[], None) {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond the current count have succeeded.
    pub fn wait_for(&self, more: usize, timeout: Duration) {
        let target = self.ok() + more;
        poll(&format!("{more} more successful requests"), timeout, || {
            (self.ok() >= target).then_some(())
        });
    }

    /// Stops the clients; returns (succeeded, failed).
    pub fn stop(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        (self.ok(), self.failed())
    }
}

/// A loopback port that was free a moment ago, for a service that must come back on
/// the same address after a restart.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The balancer with the `process` runtime on a free port, once its replicas (3, or
/// `--replicas N` in `extra`) are healthy.
pub fn process_balancer(extra: &[&str]) -> Service {
    let server = bin("server");
    let mut args = vec![
        "--runtime",
        "process",
        "--listen",
        "127.0.0.1:0",
        "--server-bin",
        server.to_str().expect("a UTF-8 path"),
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    let replicas = extra
        .iter()
        .position(|a| *a == "--replicas")
        .map_or(3, |i| {
            extra[i + 1].parse().expect("a number after --replicas")
        });
    let lb = Service::start(bin("load_balancer"), &args, &[("RUST_LOG", "warn")]);
    wait_healthy(&lb, replicas, Duration::from_secs(30));
    lb
}

/// Replica `hostname` in `/status` once it is healthy under a handle other than
/// `old_handle`: replaced, not merely still there.
pub fn replaced(lb: &Service, hostname: &str, old_handle: &str) -> Option<Value> {
    replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == hostname && r["state"] == "healthy" && r["handle"] != old_handle)
}
