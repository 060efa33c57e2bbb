//! The command line: every flag of SPEC.md, each also read from `LB_<NAME>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::hashkey::HashKey;
use crate::policy::settings::{Hedge, DEFAULT_HEDGE_BUDGET};

/// Who runs the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Docker containers, started through the engine's API.
    Docker,
    /// Child processes of the balancer, on loopback.
    Process,
    /// Existing servers given with `--backend`; nothing is started.
    Static,
    /// Docker Swarm services of one task each, through a manager's API; the
    /// `docker` runtime's flags apply (`--network lbnet` becomes `lbnet-swarm`).
    Swarm,
}

/// How the `docker` runtime reaches its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DockerAddressing {
    /// `network` when the balancer itself runs in a container, else `published`.
    Auto,
    /// Port 5000 of each replica published on 127.0.0.1 at a port the engine picks:
    /// for a balancer on the host, which cannot reach container addresses by name.
    Published,
    /// `<container-name>:5000` over the Docker network: for a balancer in a container
    /// on the same network.
    Network,
}

/// Where backends are found besides the replicas the runtime runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Discovery {
    /// Nowhere else.
    None,
    /// Under `/lb/<instance>/backends/` in etcd (`--etcd-endpoints`).
    Etcd,
}

/// Whether several balancers share one replica set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterKind {
    /// This balancer alone runs its replicas.
    None,
    /// Every balancer of the same `--instance` shares the replica set kept in etcd
    /// (`--etcd-endpoints`); one, elected, runs the replicas.
    Etcd,
}

/// A consistent-hashing HTTP load balancer that runs and heals its own replicas.
#[derive(Debug, Clone, Parser)]
// A flag given twice keeps the last value, so scripts can override a default list.
#[command(name = "load_balancer", version, args_override_self = true)]
pub struct Config {
    /// Where the balancer serves.
    #[arg(long, env = "LB_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,

    /// Who runs the replicas.
    #[arg(long, env = "LB_RUNTIME", value_enum, default_value = "docker")]
    pub runtime: RuntimeKind,

    /// Replicas to start with and keep alive.
    #[arg(long, env = "LB_REPLICAS", default_value_t = 3)]
    pub replicas: usize,

    /// The most replicas `/add` may reach (never above the ring's capacity).
    #[arg(long, env = "LB_MAX_REPLICAS")]
    pub max_replicas: Option<usize>,

    /// `process` runtime: the server binary [default: `server` beside this executable].
    #[arg(long, env = "LB_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,

    /// `docker` and `swarm` runtimes: the server image.
    #[arg(long, env = "LB_IMAGE", default_value = "lb-server:latest")]
    pub image: String,

    /// `docker` and `swarm` runtimes: the network replicas join.
    #[arg(long, env = "LB_NETWORK", default_value = "lbnet")]
    pub network: String,

    /// `docker` and `swarm` runtimes: the value of the `lb.managed-by` label of its containers;
    /// with `--discovery etcd`, its prefix there: `/lb/<instance>`.
    #[arg(long, env = "LB_INSTANCE", default_value = "load_balancer")]
    pub instance: String,

    /// `docker` and `swarm` runtimes: memory limit of each replica, in MiB.
    #[arg(long, env = "LB_REPLICA_MEMORY_MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=65536))]
    pub replica_memory_mb: u32,

    /// `docker` and `swarm` runtimes: CPU limit of each replica, in cores.
    #[arg(long, env = "LB_REPLICA_CPUS", default_value_t = 1.0, value_parser = parse_cpus)]
    pub replica_cpus: f64,

    /// `docker` and `swarm` runtimes: most processes and threads in each replica.
    #[arg(long, env = "LB_REPLICA_PIDS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=65536))]
    pub replica_pids: u32,

    /// `docker` and `swarm` runtimes: how replicas are reached.
    #[arg(long, env = "LB_DOCKER_ADDRESSING", value_enum, default_value = "auto")]
    pub docker_addressing: DockerAddressing,

    /// `docker` and `swarm` runtimes: remove every container of the instance when the balancer
    /// exits (by default they keep running, and a restarted balancer adopts them).
    #[arg(long, env = "LB_CLEANUP_ON_EXIT")]
    pub cleanup_on_exit: bool,

    /// `static` runtime: an existing server to balance, as `ADDR` or `NAME=ADDR`.
    #[arg(long = "backend", env = "LB_BACKEND", value_delimiter = ',')]
    pub backends: Vec<String>,

    /// How a replica is chosen: a hash scheme (quadratic, mixed, maglev,
    /// rendezvous) or a load-aware policy (pick-first, round-robin,
    /// weighted-round-robin, random, least-connections, least-load, p2c-ewma,
    /// response-time, health-score, failure-weighted-round-robin, resource-fit).
    #[arg(long, alias = "hash", env = "LB_POLICY", default_value = "quadratic")]
    pub policy: String,

    /// Ramp a newly healthy replica's share of traffic up over this long (warm-up).
    /// Off when unset.
    #[arg(long, env = "LB_SLOW_START", value_parser = humantime::parse_duration)]
    pub slow_start: Option<Duration>,

    /// Also send an idempotent request without a body to the next candidate when
    /// its replica has not answered after this long (`50ms`) or after the running
    /// percentile of response times (`p95`). Off when unset.
    #[arg(long, env = "LB_HEDGE")]
    pub hedge: Option<Hedge>,

    /// The most requests hedged, in percent of requests.
    #[arg(long, env = "LB_HEDGE_BUDGET", default_value_t = DEFAULT_HEDGE_BUDGET, value_parser = parse_percent)]
    pub hedge_budget: f64,

    /// Bounded loads on top of the hash scheme: a replica whose in-flight requests
    /// would pass C times the average is skipped for the next candidate (C >= 1,
    /// e.g. 1.25). Off when unset.
    #[arg(long, env = "LB_BALANCE_FACTOR", value_parser = parse_balance_factor)]
    pub balance_factor: Option<f64>,

    /// Where a request's id comes from: random, header:NAME, query:NAME,
    /// cookie:NAME, path or client-ip.
    #[arg(long, env = "LB_HASH_KEY", default_value = "random")]
    pub hash_key: HashKey,

    /// Ring slots (M).
    #[arg(long, env = "LB_SLOTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub slots: u32,

    /// Virtual nodes per replica (K).
    #[arg(long, env = "LB_VIRTUAL_NODES", default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub virtual_nodes: u32,

    /// Time between heartbeats of a replica.
    #[arg(long, env = "LB_HEARTBEAT_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long a heartbeat may take.
    #[arg(long, env = "LB_HEARTBEAT_TIMEOUT", default_value = "400ms", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Missed heartbeats in a row that mark a replica dead.
    #[arg(long, env = "LB_HEARTBEAT_FAILURES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub heartbeat_failures: u32,

    /// How long a new replica may take to answer its first heartbeat.
    #[arg(long, env = "LB_START_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,

    /// How long `/rm` lets a replica's in-flight requests finish.
    #[arg(long, env = "LB_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// How long connecting to a replica may take before the next is tried.
    #[arg(long, env = "LB_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// How long a replica may take to send its response headers.
    #[arg(long, env = "LB_RESPONSE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,

    /// How long anything may stay silent: a keep-alive connection between requests,
    /// a body in the middle, an upgraded tunnel in both directions.
    #[arg(long, env = "LB_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How long a client may take to send a whole request head, and how long a new
    /// connection may stay silent before its first byte.
    #[arg(long, env = "LB_HEADER_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// The largest request head accepted; larger ones get `431`.
    #[arg(long, env = "LB_MAX_HEADER_BYTES", default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(1024..=65536))]
    pub max_header_bytes: u32,

    /// The most client connections open at once; more wait in the listen backlog.
    #[arg(long, env = "LB_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// The most client connections one address may hold open; past it, a new one is
    /// answered `503` and closed. `0`: no limit.
    #[arg(long, env = "LB_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: u32,

    /// Request-serving threads [default: the number of cores].
    #[arg(long, env = "LB_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// Where the look-aside gRPC service (`loadbalancer.LoadBalancer`, and gRPC
    /// health) listens [default: 0.0.0.0:50050; when that default is taken the
    /// balancer runs without it and says so; an address given here must be free].
    #[arg(long, env = "LB_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,

    /// How long a backend registered over gRPC stays without a `ReportLoad`
    /// (three of its report intervals).
    #[arg(long, env = "LB_REGISTRATION_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    pub registration_ttl: Duration,

    /// Also take backends from etcd: watch `/lb/<instance>/backends/` (and keep
    /// this balancer's entry under `/lb/<instance>/balancers/`).
    #[arg(long, env = "LB_DISCOVERY", value_enum, default_value = "none")]
    pub discovery: Discovery,

    /// Share the replica set with every balancer of the same `--instance` through
    /// etcd: all route over it; one, elected, starts, respawns and removes replicas,
    /// and `/add`, `/rm` and replica controls sent to another are sent on to it.
    #[arg(long, env = "LB_CLUSTER", value_enum, default_value = "none")]
    pub cluster: ClusterKind,

    /// `--cluster etcd`: the leader's lease; when the leader dies, another leads
    /// within about this long (whole seconds, at least 1).
    #[arg(long, env = "LB_LEADER_TTL", default_value = "2s", value_parser = parse_leader_ttl)]
    pub leader_ttl: Duration,

    /// `--discovery etcd` and `--cluster etcd`: the etcd endpoints, comma separated
    /// (`http://HOST:PORT`).
    #[arg(
        long,
        env = "LB_ETCD_ENDPOINTS",
        value_name = "URL,...",
        value_delimiter = ',',
        value_parser = parse_etcd_endpoint,
        required_if_eq("discovery", "etcd"),
        required_if_eq("cluster", "etcd")
    )]
    pub etcd_endpoints: Vec<String>,

    /// Serve every call that changes something (`/add`, `/rm`, `PUT /policy`, replica
    /// controls, `/register`, `/loadtest`) only here, not on `--listen`; reads stay on both.
    #[arg(long, env = "LB_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// When set, every call that changes something needs `Authorization: Bearer TOKEN`.
    #[arg(long, env = "LB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

fn parse_leader_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.as_secs() >= 1 && d.subsec_nanos() == 0 && d.as_secs() <= 60 {
        Ok(d)
    } else {
        Err("the leader's TTL is whole seconds from 1s to 60s (etcd leases count seconds)".into())
    }
}

fn parse_balance_factor(s: &str) -> Result<f64, String> {
    let c: f64 = s.parse().map_err(|e| format!("{e}"))?;
    crate::scheme::bounded::Bound::new(c)
        .map(|b| b.factor())
        .ok_or_else(|| "the balance factor must be a number >= 1".into())
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err("a percentage must be between 0 and 100".into())
    }
}

fn parse_etcd_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        Err("an etcd endpoint is empty (expected URL,...)".into())
    } else if s.starts_with("https://") {
        Err("TLS to etcd is not supported: give http:// endpoints".into())
    } else {
        Ok(s.to_string())
    }
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    let c: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.01..=1024.0).contains(&c) {
        Ok(c)
    } else {
        Err("CPUs must be between 0.01 and 1024".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_specified_ones() {
        let c = Config::try_parse_from(["load_balancer"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(c.runtime, RuntimeKind::Docker);
        assert_eq!(c.replicas, 3);
        assert_eq!(c.image, "lb-server:latest");
        assert_eq!(c.network, "lbnet");
        assert_eq!(c.instance, "load_balancer");
        assert_eq!(c.policy, "quadratic");
        assert_eq!((c.slow_start, c.hedge, c.hedge_budget), (None, None, 5.0));
        assert_eq!(c.hash_key, HashKey::Random);
        assert_eq!((c.slots, c.virtual_nodes), (512, 9));
        assert_eq!(c.docker_addressing, DockerAddressing::Auto);
        assert!(!c.cleanup_on_exit);
        assert_eq!(c.discovery, Discovery::None);
        assert!(c.etcd_endpoints.is_empty());
    }

    #[test]
    fn etcd_discovery_takes_comma_separated_endpoints_and_refuses_to_start_without_them() {
        let c = Config::try_parse_from([
            "load_balancer",
            "--discovery",
            "etcd",
            "--etcd-endpoints",
            "http://10.0.0.1:2379,http://10.0.0.2:2379",
        ])
        .unwrap();
        assert_eq!(c.discovery, Discovery::Etcd);
        assert_eq!(
            c.etcd_endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        let err = Config::try_parse_from(["load_balancer", "--discovery", "etcd"]).unwrap_err();
        assert!(err.to_string().contains("--etcd-endpoints"), "{err}");
        for bad in ["", "https://10.0.0.1:2379"] {
            assert!(
                Config::try_parse_from(["load_balancer", "--etcd-endpoints", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Config::try_parse_from(["load_balancer", "--discovery", "consul"]).is_err());
    }

    #[test]
    fn flags_parse_durations_keys_and_repeated_backends() {
        let c = Config::try_parse_from([
            "load_balancer",
            "--runtime",
            "static",
            "--backend",
            "127.0.0.1:1",
            "--backend",
            "b=127.0.0.1:2",
            "--hash-key",
            "query:id",
            "--heartbeat-interval",
            "250ms",
        ])
        .unwrap();
        assert_eq!(c.runtime, RuntimeKind::Static);
        assert_eq!(c.backends, vec!["127.0.0.1:1", "b=127.0.0.1:2"]);
        assert_eq!(c.hash_key, HashKey::Query("id".into()));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
    }

    #[test]
    fn a_balance_factor_below_one_is_refused_and_none_is_off() {
        let c = Config::try_parse_from(["load_balancer", "--balance-factor", "1.25"]).unwrap();
        assert_eq!(c.balance_factor, Some(1.25));
        assert_eq!(
            Config::try_parse_from(["load_balancer"])
                .unwrap()
                .balance_factor,
            None
        );
        assert!(Config::try_parse_from(["load_balancer", "--balance-factor", "0.5"]).is_err());
    }

    #[test]
    fn a_bad_hash_key_is_refused_at_parse_time() {
        assert!(Config::try_parse_from(["load_balancer", "--hash-key", "nope"]).is_err());
    }

    #[test]
    fn hash_is_an_alias_of_policy_and_hedges_parse_at_startup() {
        let c = Config::try_parse_from(["load_balancer", "--hash", "maglev"]).unwrap();
        assert_eq!(c.policy, "maglev");
        let c = Config::try_parse_from([
            "load_balancer",
            "--policy",
            "round-robin",
            "--hedge",
            "p95",
            "--slow-start",
            "30s",
        ])
        .unwrap();
        assert_eq!(c.policy, "round-robin");
        assert_eq!(c.hedge, Some(Hedge::Percentile(95.0)));
        assert_eq!(c.slow_start, Some(Duration::from_secs(30)));
        assert!(Config::try_parse_from(["load_balancer", "--hedge", "soon"]).is_err());
        assert!(Config::try_parse_from(["load_balancer", "--hedge-budget", "120"]).is_err());
    }
}
