//! The registered source: backends that announce themselves, over gRPC
//! (`RegisterServer`, then `ReportLoad` to stay) or HTTP (`POST /register`, repeated
//! to renew), and leave when they say so or when their registration expires. The
//! balancer never starts, stops or restarts them.
//!
//! One task owns the registrations and answers the API and the gRPC service by
//! message; it tells the registry of every join and leave as a batch, like the
//! managed source. A report does not go through the registry: it is written into
//! the backend's figures, which every snapshot shares.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::claims::{Claims, Owner};
use super::{Batch, Change, ChannelSource, Member};
use crate::admin::validate_name;
use crate::backend::Backend;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::snapshot::ReplicaState;

/// The longest TTL an HTTP registration may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// How often expiries are looked for.
const SWEEP: Duration = Duration::from_millis(100);

/// A backend announcing itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its name in `/status`; derived from its address when not given.
    pub name: Option<String>,
    /// Where it serves look-aside gRPC, if it does.
    pub grpc_address: Option<String>,
    /// Where it serves HTTP, if it does: the data plane routes there.
    pub http_address: Option<String>,
    /// How long it stays without renewing.
    pub ttl: Duration,
}

/// What a registration became.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Registered {
    pub name: String,
    pub id: u32,
    pub grpc_address: Option<String>,
    pub http_address: Option<String>,
    pub ttl_s: f64,
}

/// Why a registration, report or deregistration was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistrationError {
    #[error("'{0}' is not a host:port address")]
    BadAddress(String),
    #[error("a backend needs an address (gRPC, HTTP or both)")]
    NoAddress,
    #[error("{0}")]
    Refused(ApiError),
    #[error("no backend registered as '{0}': register first")]
    Unknown(String),
    #[error("the load must be 0 or more, not {0}")]
    NegativeLoad(i64),
    #[error("the balancer is shutting down")]
    Stopping,
}

impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::Refused(api) => api,
            RegistrationError::Unknown(_) => ApiError::NotFound(e.to_string()),
            RegistrationError::Stopping => ApiError::Unavailable(e.to_string()),
            _ => ApiError::bad(e.to_string()),
        }
    }
}

/// Checks a `host:port` address: a port from 1 to 65535 and a host that is an IP
/// address or a DNS name.
pub fn check_address(address: &str) -> Result<(), RegistrationError> {
    let bad = || RegistrationError::BadAddress(address.to_string());
    if address.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The TTL of an HTTP registration that gives none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Reads a `POST /register` body: `{"name": "b1", "address": "127.0.0.1:8001",
/// "ttl_s": 10}`, and optionally `grpc_address`. Addresses are checked when the
/// registration is applied.
pub fn parse_registration(body: &[u8]) -> Result<Registration, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("Invalid JSON body: {e}")))?;
    let fields = v
        .as_object()
        .ok_or_else(|| ApiError::bad("The body must be a JSON object"))?;
    let text = |field: &str| -> Result<Option<String>, ApiError> {
        match fields.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad(format!("Field '{field}' must be a string"))),
        }
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !["name", "address", "grpc_address", "ttl_s"].contains(&k.as_str()))
    {
        return Err(ApiError::bad(format!(
            "Unknown field '{other}': use name, address, grpc_address and ttl_s"
        )));
    }
    let name = text("name")?.ok_or_else(|| ApiError::bad("Field 'name' is required"))?;
    let address = text("address")?.ok_or_else(|| ApiError::bad("Field 'address' is required"))?;
    let ttl = match fields.get("ttl_s") {
        None => DEFAULT_TTL,
        Some(v) => v
            .as_f64()
            .filter(|t| *t > 0.0 && *t <= MAX_TTL.as_secs_f64())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                ApiError::bad("Field 'ttl_s' must be a number of seconds above 0 and at most 3600")
            })?,
    };
    Ok(Registration {
        name: Some(name),
        grpc_address: text("grpc_address")?,
        http_address: Some(address),
        ttl,
    })
}

/// Reads a `DELETE /register` body: `{"name": "b1"}`.
pub fn parse_deregistration(body: &[u8]) -> Result<String, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("Invalid JSON body: {e}")))?;
    match v.as_object().map(|o| (o.len(), o.get("name"))) {
        Some((1, Some(serde_json::Value::String(name)))) => Ok(name.clone()),
        _ => Err(ApiError::bad(
            "The body must be {\"name\": \"<registered name>\"}",
        )),
    }
}

/// A name for a backend that gave none: its address, made a valid name.
fn name_from(address: &str) -> String {
    address
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_start_matches('-')
        .to_string()
}

enum Command {
    Register(
        Registration,
        oneshot::Sender<Result<Registered, RegistrationError>>,
    ),
    Report {
        address: String,
        load: i64,
        available: bool,
        reply: oneshot::Sender<Result<String, RegistrationError>>,
    },
    Deregister {
        /// A name, or a gRPC or HTTP address.
        who: String,
        reply: oneshot::Sender<Result<String, RegistrationError>>,
    },
}

/// How the API and the gRPC service reach the registered source.
#[derive(Debug, Clone)]
pub struct RegisteredHandle(mpsc::UnboundedSender<Command>);

impl RegisteredHandle {
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, RegistrationError>>) -> Command,
    ) -> Result<T, RegistrationError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(command(tx))
            .map_err(|_| RegistrationError::Stopping)?;
        rx.await.map_err(|_| RegistrationError::Stopping)?
    }

    /// Registers a backend, or renews its registration; answers once it is routable.
    pub async fn register(&self, r: Registration) -> Result<Registered, RegistrationError> {
        self.ask(|reply| Command::Register(r, reply)).await
    }

    /// Records a backend's load (and renews it); answers with its name.
    pub async fn report(
        &self,
        address: String,
        load: i64,
        available: bool,
    ) -> Result<String, RegistrationError> {
        self.ask(|reply| Command::Report {
            address,
            load,
            available,
            reply,
        })
        .await
    }

    /// Takes a backend out at once; answers with its name.
    pub async fn deregister(&self, who: String) -> Result<String, RegistrationError> {
        self.ask(|reply| Command::Deregister { who, reply }).await
    }
}

struct Entry {
    id: u32,
    grpc_address: Option<String>,
    http_address: Option<String>,
    backend: Arc<Backend>,
    ttl: Duration,
    expires: Instant,
}

/// The task that owns the registrations.
pub struct RegisteredTask {
    claims: Claims,
    metrics: Arc<Metrics>,
    entries: BTreeMap<String, Entry>,
    changes: mpsc::UnboundedSender<Batch>,
}

impl RegisteredTask {
    /// Starts the task; returns its handle and the source for the registry. It ends
    /// when every handle is dropped.
    pub fn spawn(claims: Claims, metrics: Arc<Metrics>) -> (RegisteredHandle, ChannelSource) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (changes, source) = ChannelSource::new("registered");
        let task = RegisteredTask {
            claims,
            metrics,
            entries: BTreeMap::new(),
            changes,
        };
        tokio::spawn(task.run(rx));
        (RegisteredHandle(tx), source)
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = sweep.tick() => self.expire(Instant::now()),
            }
        }
        let gone: Vec<u32> = self.entries.values().map(|e| e.id).collect();
        self.publish(gone, None);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Register(r, reply) => match self.register(r) {
                Ok((registered, changed)) => {
                    if changed {
                        // Answered once the registry has published it: routable then.
                        self.publish(
                            vec![],
                            Some(Box::new(move || {
                                let _ = reply.send(Ok(registered));
                            })),
                        );
                    } else {
                        let _ = reply.send(Ok(registered));
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Report {
                address,
                load,
                available,
                reply,
            } => {
                let _ = reply.send(self.report(&address, load, available));
            }
            Command::Deregister { who, reply } => {
                let Some(name) = self.find(&who) else {
                    let _ = reply.send(Err(RegistrationError::Unknown(who)));
                    return;
                };
                let entry = self.entries.remove(&name).expect("found");
                log::info!("{name} deregistered");
                self.claims.release(entry.id);
                self.publish(
                    vec![entry.id],
                    Some(Box::new(move || {
                        let _ = reply.send(Ok(name));
                    })),
                );
            }
        }
    }

    /// Validates and records a registration; whether the registry must hear of it.
    fn register(&mut self, r: Registration) -> Result<(Registered, bool), RegistrationError> {
        for address in r.grpc_address.iter().chain(&r.http_address) {
            check_address(address)?;
        }
        let address = r
            .grpc_address
            .as_ref()
            .or(r.http_address.as_ref())
            .ok_or(RegistrationError::NoAddress)?;
        let name = r.name.clone().unwrap_or_else(|| name_from(address));
        validate_name(&name).map_err(RegistrationError::Refused)?;
        let expires = Instant::now() + r.ttl;
        if let Some(e) = self.entries.get_mut(&name) {
            if e.grpc_address == r.grpc_address && e.http_address == r.http_address {
                // The same backend again: a renewal.
                e.ttl = r.ttl;
                e.expires = expires;
                return Ok((registered(&name, e), false));
            }
        }
        let id = self
            .claims
            .claim(Owner::Registered, &name)
            .map_err(RegistrationError::Refused)?;
        let shown = r.http_address.clone().unwrap_or_else(|| address.clone());
        let backend = Backend::new(id, name.clone(), shown, self.metrics.replica(&name))
            .serving_grpc(r.grpc_address.clone());
        log::info!("{name} registered (id {id}) at {address}");
        let entry = Entry {
            id,
            grpc_address: r.grpc_address,
            http_address: r.http_address,
            backend: Arc::new(backend),
            ttl: r.ttl,
            expires,
        };
        let out = registered(&name, &entry);
        self.entries.insert(name, entry);
        Ok((out, true))
    }

    fn report(
        &mut self,
        address: &str,
        load: i64,
        available: bool,
    ) -> Result<String, RegistrationError> {
        if load < 0 {
            return Err(RegistrationError::NegativeLoad(load));
        }
        let name = self
            .find(address)
            .ok_or_else(|| RegistrationError::Unknown(address.to_string()))?;
        let e = self.entries.get_mut(&name).expect("found");
        e.backend
            .report(u32::try_from(load).unwrap_or(u32::MAX), available);
        e.expires = Instant::now() + e.ttl;
        Ok(name)
    }

    /// The name of the backend called `who` or serving at `who`.
    fn find(&self, who: &str) -> Option<String> {
        if self.entries.contains_key(who) {
            return Some(who.to_string());
        }
        self.entries
            .iter()
            .find(|(_, e)| {
                e.grpc_address.as_deref() == Some(who) || e.http_address.as_deref() == Some(who)
            })
            .map(|(n, _)| n.clone())
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(n, _)| n.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for name in expired {
            let e = self.entries.remove(&name).expect("listed");
            log::warn!("{name} expired: no renewal or report for {:?}", e.ttl);
            self.claims.release(e.id);
            gone.push(e.id);
        }
        self.publish(gone, None);
    }

    /// Tells the registry of every entry, and that `gone` left; `then` runs once
    /// it has published.
    fn publish(&mut self, gone: Vec<u32>, then: Option<Box<dyn FnOnce() + Send>>) {
        let members = self.entries.iter().map(|(name, e)| {
            Change::Upsert(Member {
                id: e.id,
                hostname: name.clone(),
                state: ReplicaState::Healthy,
                address: e.http_address.clone(),
                handle: None,
                restarts: 0,
                backend: Some(e.backend.clone()),
                enabled: true,
                owner: Owner::Registered,
                grpc_address: e.grpc_address.clone(),
            })
        });
        let changes = gone
            .into_iter()
            .map(Change::Remove)
            .chain(members)
            .collect();
        let _ = self.changes.send(Batch { changes, then });
    }
}

fn registered(name: &str, e: &Entry) -> Registered {
    Registered {
        name: name.to_string(),
        id: e.id,
        grpc_address: e.grpc_address.clone(),
        http_address: e.http_address.clone(),
        ttl_s: e.ttl.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for ok in [
            "127.0.0.1:8001",
            "[::1]:50051",
            "backend-1.local:80",
            "b1:1",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "host:99999",
            ":80",
            "a b:80",
            "-a:80",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_http_registration_body_is_read_and_every_bad_one_refused() {
        let r = parse_registration(br#"{"name": "b1", "address": "127.0.0.1:8001", "ttl_s": 10}"#)
            .unwrap();
        assert_eq!(r.name.as_deref(), Some("b1"));
        assert_eq!(r.http_address.as_deref(), Some("127.0.0.1:8001"));
        assert_eq!(r.ttl, Duration::from_secs(10));
        let default = parse_registration(br#"{"name": "b1", "address": "h:1"}"#).unwrap();
        assert_eq!(default.ttl, DEFAULT_TTL);
        for bad in [
            &br#"nope"#[..],
            br#"[]"#,
            br#"{"address": "h:1"}"#,
            br#"{"name": "b1"}"#,
            br#"{"name": 1, "address": "h:1"}"#,
            br#"{"name": "b1", "address": "h:1", "ttl_s": 0}"#,
            br#"{"name": "b1", "address": "h:1", "ttl_s": 4000}"#,
            br#"{"name": "b1", "address": "h:1", "ttl": 5}"#,
        ] {
            assert!(
                parse_registration(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_deregistration(br#"{"name": "b1"}"#).unwrap(), "b1");
        assert!(parse_deregistration(br#"{"name": "b1", "x": 1}"#).is_err());
    }

    #[test]
    fn a_name_from_an_address_is_a_valid_name() {
        let name = name_from("127.0.0.1:50051");
        assert_eq!(name, "127-0-0-1-50051");
        assert!(validate_name(&name).is_ok());
        assert!(validate_name(&name_from("[::1]:5")).is_ok());
    }

    fn task() -> (RegisteredTask, mpsc::UnboundedReceiver<Batch>) {
        let (changes, rx) = mpsc::unbounded_channel();
        let task = RegisteredTask {
            claims: Claims::new(56),
            metrics: Arc::new(Metrics::new()),
            entries: BTreeMap::new(),
            changes,
        };
        (task, rx)
    }

    fn grpc(name: &str, address: &str) -> Registration {
        Registration {
            name: Some(name.into()),
            grpc_address: Some(address.into()),
            http_address: None,
            ttl: Duration::from_secs(3),
        }
    }

    #[tokio::test]
    async fn registering_again_is_a_renewal_and_keeps_the_id() {
        let (mut t, _rx) = task();
        let (first, changed) = t.register(grpc("b1", "127.0.0.1:1")).unwrap();
        assert!(changed);
        let (again, changed) = t.register(grpc("b1", "127.0.0.1:1")).unwrap();
        assert!(!changed);
        assert_eq!(first.id, again.id);
        let (other, _) = t.register(grpc("b2", "127.0.0.1:2")).unwrap();
        assert_eq!(other.id, first.id + 1);
    }

    #[tokio::test]
    async fn a_report_renews_and_records_and_bad_ones_change_nothing() {
        let (mut t, _rx) = task();
        t.register(grpc("b1", "127.0.0.1:1")).unwrap();
        assert_eq!(t.report("127.0.0.1:1", 7, false).unwrap(), "b1");
        let b = &t.entries["b1"].backend;
        assert_eq!((b.reported_load(), b.available()), (7, false));
        assert_eq!(
            t.report("127.0.0.1:1", -1, true),
            Err(RegistrationError::NegativeLoad(-1))
        );
        assert_eq!(t.entries["b1"].backend.reported_load(), 7);
        assert!(matches!(
            t.report("127.0.0.1:9", 1, true),
            Err(RegistrationError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn a_registration_that_is_not_renewed_expires_and_frees_its_id() {
        let (mut t, mut rx) = task();
        let (r, _) = t.register(grpc("b1", "127.0.0.1:1")).unwrap();
        t.expire(Instant::now() + Duration::from_secs(2));
        assert!(t.entries.contains_key("b1"));
        t.expire(Instant::now() + Duration::from_secs(4));
        assert!(t.entries.is_empty());
        let batch = rx.recv().await.unwrap();
        assert!(matches!(batch.changes[..], [Change::Remove(id)] if id == r.id));
        assert_eq!(t.claims.holder("b1"), None);
    }

    #[tokio::test]
    async fn bad_registrations_are_refused_and_change_nothing() {
        let (mut t, _rx) = task();
        assert_eq!(
            t.register(grpc("b1", "nowhere")).unwrap_err(),
            RegistrationError::BadAddress("nowhere".into())
        );
        let none = Registration {
            grpc_address: None,
            ..grpc("b1", "x:1")
        };
        assert_eq!(t.register(none).unwrap_err(), RegistrationError::NoAddress);
        assert!(t.register(grpc("-bad", "127.0.0.1:1")).is_err());
        t.claims.claim(Owner::Managed, "Server1").unwrap();
        assert!(matches!(
            t.register(grpc("Server1", "127.0.0.1:1")),
            Err(RegistrationError::Refused(ApiError::Conflict(_)))
        ));
        assert!(t.entries.is_empty());
    }
}
