//! Making the replica known for look-aside balancing: registering with a balancer's
//! gRPC `LoadBalancer` (`--register-with`, `balancer`) or keeping an entry in etcd
//! (`--etcd-endpoints`, `etcd`), and reporting the load every `--report-interval`.
//!
//! What both share is pure and tested here: the addresses advertised, what is
//! reported, and how long to wait after failures. The loops themselves only carry
//! out those decisions.

mod balancer;
mod etcd;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::load::Load;

/// The look-aside flags. Registering needs `--grpc-listen`: what a balancer hands its
/// clients is the gRPC address.
#[derive(Debug, clap::Args)]
pub struct Flags {
    /// A balancer's gRPC address to register with and report the load to.
    #[arg(
        long,
        env = "REGISTER_WITH",
        value_name = "HOST:PORT",
        requires = "grpc_listen",
        conflicts_with = "etcd_endpoints"
    )]
    register_with: Option<HostPort>,
    /// How often the load is reported (to the balancer or into etcd).
    #[arg(long, env = "REPORT_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    report_interval: Duration,
    /// The gRPC address to advertise (default: the bound one, 127.0.0.1 for an
    /// unspecified IP).
    #[arg(long, env = "ADVERTISE_GRPC", value_name = "HOST:PORT")]
    advertise_grpc: Option<HostPort>,
    /// The HTTP address to advertise (default: the bound one, 127.0.0.1 for an
    /// unspecified IP).
    #[arg(long, env = "ADVERTISE_HTTP", value_name = "HOST:PORT")]
    advertise_http: Option<HostPort>,
    /// etcd endpoints to keep this replica's entry in, instead of registering with a
    /// balancer.
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        value_name = "URL,...",
        value_delimiter = ',',
        value_parser = parse_endpoint,
        requires = "grpc_listen"
    )]
    etcd_endpoints: Vec<String>,
    /// The balancer instance's prefix in etcd: the entry is `<prefix>/backends/<name>`.
    #[arg(long, env = "ETCD_PREFIX", default_value = "/lb/load_balancer")]
    etcd_prefix: String,
    /// The entry's lease: how long it outlives a replica that died without revoking it.
    #[arg(long, env = "ETCD_TTL", default_value = "5s", value_parser = parse_ttl)]
    etcd_ttl: Duration,
}

/// Where this replica can be reached, and under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// `--server-id`.
    pub name: String,
    /// The gRPC `host:port`.
    pub grpc: String,
    /// The HTTP `host:port`.
    pub http: String,
}

/// Why the look-aside flags cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceError {
    /// `--server-id` cannot be the last segment of an etcd key.
    BadKeyName(String),
    /// The balancer's address does not make a URI.
    BadBalancer(String),
}

impl fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnnounceError::BadKeyName(name) => write!(
                f,
                "--server-id '{name}' cannot name an etcd entry: it must be non-empty \
                 and without '/'"
            ),
            AnnounceError::BadBalancer(e) => write!(f, "--register-with: {e}"),
        }
    }
}

impl std::error::Error for AnnounceError {}

/// What keeps the replica known: one of the two loops, ready to run (the first
/// boxed: a tonic endpoint is large).
pub enum Announcer {
    Balancer(Box<balancer::ToBalancer>),
    Etcd(etcd::ToEtcd),
}

impl Flags {
    /// The announcer these flags ask for, if any, for a replica named `name` serving
    /// gRPC on `grpc` and HTTP on `http`.
    pub fn announcer(
        &self,
        name: &str,
        grpc: Option<SocketAddr>,
        http: SocketAddr,
    ) -> Result<Option<Announcer>, AnnounceError> {
        // clap has made sure of `--grpc-listen` when either is given.
        let Some(grpc) = grpc else { return Ok(None) };
        let me = Advertised {
            name: name.to_string(),
            grpc: advertised(grpc, self.advertise_grpc.as_ref()),
            http: advertised(http, self.advertise_http.as_ref()),
        };
        if let Some(balancer) = &self.register_with {
            let to = balancer::ToBalancer::new(balancer, me, self.report_interval)?;
            return Ok(Some(Announcer::Balancer(Box::new(to))));
        }
        if !self.etcd_endpoints.is_empty() {
            let key = etcd_key(&self.etcd_prefix, name)?;
            let to = etcd::ToEtcd {
                endpoints: self.etcd_endpoints.clone(),
                key,
                me,
                ttl_s: ttl_seconds(self.etcd_ttl),
                interval: self.report_interval,
            };
            return Ok(Some(Announcer::Etcd(to)));
        }
        Ok(None)
    }
}

impl Announcer {
    /// Keeps the replica known until `stop`, then leaves at once (best effort).
    pub async fn run(self, load: Arc<Load>, stop: Stop) {
        match self {
            Announcer::Balancer(to) => to.run(load, stop).await,
            Announcer::Etcd(to) => to.run(load, stop).await,
        }
    }
}

/// The request to stop announcing and leave, seen by every task of the gRPC side.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Watches `receiver`, on which `true` requests the stop.
    pub fn new(receiver: watch::Receiver<bool>) -> Self {
        Stop(receiver)
    }

    /// Returns once a stop is requested (or nobody is left to request one).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps `wait`; `false` when a stop came first.
    pub async fn sleep(&mut self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.requested() => false,
        }
    }
}

/// A `host:port` to reach something at: a name or an IP (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    host: String,
    port: u16,
}

/// A `host:port` that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortError(pub String);

impl fmt::Display for HostPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not HOST:PORT (a name or IP, IPv6 in brackets, and a port from 1 \
             to 65535, e.g. 10.0.0.5:50051)",
            self.0
        )
    }
}

impl std::error::Error for HostPortError {}

/// A host name or IPv4 address: letters, digits, `.`, `-`, `_`; or `[IPv6]`.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(s: &str) -> Result<Self, HostPortError> {
        let bad = || HostPortError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(bad)?;
        if !valid_host(host) {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The address to advertise for one bound at `bound`: the one given, else the bound
/// one with an unspecified IP (`0.0.0.0`, `::`), which nobody can dial, made loopback.
pub fn advertised(bound: SocketAddr, given: Option<&HostPort>) -> String {
    if let Some(given) = given {
        return given.to_string();
    }
    let ip = if bound.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bound.ip()
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

/// `<prefix>/backends/<name>`, whatever slashes end the prefix; `name` must be one
/// key segment, so that the balancer's watch reads it back as the name.
pub fn etcd_key(prefix: &str, name: &str) -> Result<String, AnnounceError> {
    if name.is_empty() || name.contains('/') {
        return Err(AnnounceError::BadKeyName(name.to_string()));
    }
    Ok(format!("{}/backends/{name}", prefix.trim_end_matches('/')))
}

/// The load reported at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Requests in flight (HTTP and gRPC), saturated to what `ServerLoad.load` holds.
    pub load: i32,
    /// Whether one more request would be taken (below `--max-concurrent`).
    pub available: bool,
}

impl Report {
    /// From a count of requests in flight and whether one more fits.
    pub fn new(in_flight: usize, available: bool) -> Self {
        Report {
            load: i32::try_from(in_flight).unwrap_or(i32::MAX),
            available,
        }
    }

    /// What `load` carries now.
    pub fn of(load: &Load) -> Self {
        Report::new(load.in_flight(), load.available())
    }
}

/// How long to wait before trying again after failures: doubling from `first` up to
/// `cap`, scaled by a jitter so replicas that lost their balancer together do not
/// all come back in the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// A refused connection is cheap, so start fast; 2 s is short enough that a
    /// balancer (or etcd) that came back has its replicas again within a few seconds.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The wait after `failures` failures in a row (none: no wait). `jitter` in
    /// `0..=1` scales it between half and all of it.
    pub fn after(&self, failures: u32, jitter: f64) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(31);
        let full = self
            .first
            .checked_mul(1 << doublings)
            .map_or(self.cap, |d| d.min(self.cap));
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// `--report-interval`: a humantime duration above zero.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e}"))?;
    if d.is_zero() {
        return Err("the report interval must be above zero".into());
    }
    Ok(d)
}

/// `--etcd-ttl`: a humantime duration of at least 1 s, etcd's leases being whole
/// seconds.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}': {e}"))?;
    if d < Duration::from_secs(1) {
        return Err("the lease TTL must be at least 1s".into());
    }
    Ok(d)
}

/// A TTL in whole seconds, rounded up so the lease is never shorter than asked.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// One `--etcd-endpoints` URL: not empty.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an etcd endpoint is empty (expected URL,...)".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        s.parse().unwrap()
    }

    #[test]
    fn a_host_and_port_is_a_name_or_ip_and_a_port_from_1() {
        for good in [
            "127.0.0.1:50051",
            "backend-1.local:8080",
            "[::1]:9",
            "b_2:65535",
        ] {
            assert_eq!(hp(good).to_string(), good);
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            ":80",
            "::1:80",
            "[nope]:80",
            "http://h:80",
            "a b:80",
            "h:x",
            "",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unspecified_bound_ip_is_advertised_as_loopback() {
        let v4: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let v6: SocketAddr = "[::]:5001".parse().unwrap();
        assert_eq!(advertised(v4, None), "127.0.0.1:5000");
        assert_eq!(advertised(v6, None), "127.0.0.1:5001");
    }

    #[test]
    fn a_specific_bound_ip_is_advertised_as_it_is() {
        let v4: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:5001".parse().unwrap();
        assert_eq!(advertised(v4, None), "10.1.2.3:5000");
        assert_eq!(advertised(v6, None), "[fd00::1]:5001");
    }

    #[test]
    fn a_given_address_is_advertised_whatever_was_bound() {
        let bound: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let given = hp("replica-3.internal:6000");
        assert_eq!(advertised(bound, Some(&given)), "replica-3.internal:6000");
    }

    #[test]
    fn the_etcd_key_is_the_prefix_then_backends_then_the_name() {
        assert_eq!(
            etcd_key("/lb/load_balancer", "r1").unwrap(),
            "/lb/load_balancer/backends/r1"
        );
        assert_eq!(etcd_key("/lb/x/", "r1").unwrap(), "/lb/x/backends/r1");
        assert!(etcd_key("/lb/x", "a/b").is_err());
        assert!(etcd_key("/lb/x", "").is_err());
    }

    #[test]
    fn the_report_is_the_requests_in_flight_and_whether_one_more_fits() {
        assert_eq!(
            Report::new(3, true),
            Report {
                load: 3,
                available: true
            }
        );
        assert_eq!(Report::new(usize::MAX, false).load, i32::MAX);
        let load = Load::new(Some(1));
        assert_eq!(Report::of(&load), Report::new(0, true));
        let _in_flight = load.enter().unwrap();
        assert_eq!(Report::of(&load), Report::new(1, false));
    }

    #[test]
    fn the_backoff_doubles_from_the_first_wait_up_to_the_cap() {
        let b = Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let full = |n| b.after(n, 1.0);
        assert_eq!(full(0), Duration::ZERO);
        assert_eq!(full(1), Duration::from_millis(100));
        assert_eq!(full(2), Duration::from_millis(200));
        assert_eq!(full(5), Duration::from_millis(1600));
        assert_eq!(full(6), Duration::from_secs(2));
        assert_eq!(full(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn the_jitter_takes_the_backoff_between_half_and_all_of_it() {
        let b = Backoff::default();
        assert_eq!(b.after(2, 0.0), Duration::from_millis(100));
        assert_eq!(b.after(2, 0.5), Duration::from_millis(150));
        assert_eq!(b.after(2, 7.0), Duration::from_millis(200));
        assert_eq!(b.after(2, -1.0), Duration::from_millis(100));
    }

    #[test]
    fn the_report_interval_is_a_duration_above_zero() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn the_ttl_is_at_least_a_second_and_rounded_up_to_whole_seconds() {
        assert_eq!(parse_ttl("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_ttl("500ms").is_err());
        assert_eq!(ttl_seconds(Duration::from_secs(5)), 5);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn an_empty_etcd_endpoint_is_refused() {
        assert_eq!(
            parse_endpoint(" http://127.0.0.1:2379"),
            Ok("http://127.0.0.1:2379".into())
        );
        assert!(parse_endpoint("").is_err());
    }
}
