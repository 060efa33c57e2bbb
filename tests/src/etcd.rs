//! A real single-member etcd on loopback for a test (`/usr/bin/etcd`, or `$ETCD_BIN`),
//! with its data in a temporary directory, killed and removed on drop; and blocking
//! calls to read and write it, so tests check what a replica or the balancer wrote
//! without an async runtime of their own.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};

use crate::free_port;

/// How long etcd may take to elect itself leader and answer.
const READY: Duration = Duration::from_secs(20);
/// How long one call may take.
const CALL: Duration = Duration::from_secs(5);
/// How long one readiness probe may take: a call to an etcd not listening yet waits
/// for it rather than fail.
const PROBE: Duration = Duration::from_millis(500);

/// One key's value and the lease it lives under (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub lease: i64,
}

/// A running etcd. Stopping and starting it again keeps its ports and its data, like
/// an etcd that was down for a while.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    runtime: tokio::runtime::Runtime,
}

impl Etcd {
    /// Starts one on free loopback ports and waits until it answers.
    pub fn start() -> Etcd {
        // A port free a moment ago may be taken by the time etcd binds it: then
        // etcd exits at once, and other ports are tried.
        for _ in 0..3 {
            let client_port = free_port();
            let peer_port = loop {
                let p = free_port();
                if p != client_port {
                    break p;
                }
            };
            let dir =
                std::env::temp_dir().join(format!("e2e-etcd-{}-{client_port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a directory for etcd");
            let mut etcd = Etcd {
                child: None,
                dir,
                client_port,
                peer_port,
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for etcd calls"),
            };
            if etcd.launch() {
                return etcd;
            }
        }
        panic!("etcd did not start on three pairs of free ports");
    }

    /// `http://127.0.0.1:PORT`, for `--etcd-endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (its data stays): etcd is down until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports with the same data, and waits until it
    /// answers.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch(),
            "etcd did not start again on port {}; see {}",
            self.client_port,
            self.dir.join("etcd.log").display()
        );
    }

    /// The key's value and lease, if it exists.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.call(|mut c| async move { c.get(key, None).await })
            .kvs()
            .first()
            .map(entry)
    }

    /// Every key under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<Entry> {
        let options = GetOptions::new().with_prefix();
        self.call(|mut c| async move { c.get(prefix, Some(options)).await })
            .kvs()
            .iter()
            .map(entry)
            .collect()
    }

    /// Writes `key` with no lease.
    pub fn put(&self, key: &str, value: &str) {
        self.call(|mut c| async move { c.put(key, value, None).await });
    }

    /// Writes `key` under a new lease of `ttl_s` seconds (not kept alive: the key
    /// goes when it expires) and returns the lease.
    pub fn put_leased(&self, key: &str, value: &str, ttl_s: i64) -> i64 {
        self.call(|mut c| async move {
            let lease = c.lease_grant(ttl_s, None).await?.id();
            let under = PutOptions::new().with_lease(lease);
            c.put(key, value, Some(under)).await?;
            Ok(lease)
        })
    }

    /// Revokes `lease`: its keys go at once.
    pub fn revoke(&self, lease: i64) {
        self.call(|mut c| async move { c.lease_revoke(lease).await });
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        self.call(|mut c| async move { c.delete(key, None).await });
    }

    /// Runs `op` on a new client (so a call after `restart` needs nothing more);
    /// panics when it fails or takes over `CALL`.
    fn call<T, F>(&self, op: impl FnOnce(Client) -> F) -> T
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.try_call(CALL, op)
            .unwrap_or_else(|e| panic!("etcd at {}: {e}", self.endpoint()))
    }

    fn try_call<T, F>(&self, within: Duration, op: impl FnOnce(Client) -> F) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let endpoint = self.endpoint();
        self.runtime.block_on(async {
            let work = async {
                let client = Client::connect([endpoint.as_str()], None).await?;
                op(client).await
            };
            match tokio::time::timeout(within, work).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer in {within:?}")),
            }
        })
    }

    /// Starts the process on this one's ports and data; `false` when it exited
    /// before answering (a port was taken).
    fn launch(&mut self) -> bool {
        let bin = std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd's log file");
        let child = Command::new(&bin)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                self.child = None;
                return false;
            }
            if self
                .try_call(PROBE, |mut c| async move { c.get("ready?", None).await })
                .is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        panic!(
            "etcd did not answer in {READY:?}; see {}",
            self.dir.join("etcd.log").display()
        );
    }
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        lease: kv.lease(),
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
