//! A consistent-hashing HTTP load balancer that runs, watches and replaces its own
//! replicas.
//!
//! The pure core: [`backend`] (a backend and its live figures), [`ring`], [`table`]
//! and [`scheme`] (placement and lookup), `policy` (how a request's replica is
//! chosen), [`hashkey`] (where a request's key comes from), [`admin`] (validation and
//! planning of `/add` and `/rm`), [`error`] (every client-visible error as HTTP), and
//! the data plane's HTTP/1 framing ([`dataplane::http1`], [`dataplane::chunked`]).
//! The edges around it: `registry` (owns the backend set; its managed source keeps
//! replicas alive), `provisioner` (who runs them), `health` (heartbeats), `snapshot`
//! (what requests read), [`dataplane`] (the listener clients talk to), `api` (the
//! admin API), `metrics` (Prometheus), [`app`] (wiring them from a [`config::Config`]).
//! Only what other crates use (the binary, `analysis`, the fuzz targets, the benches)
//! is public. `docs/architecture.md` draws it.

pub mod admin;
pub(crate) mod api;
pub mod app;
pub mod backend;
pub mod config;
pub(crate) mod dashboard;
pub mod dataplane;
pub mod error;
pub mod hashkey;
pub(crate) mod health;
pub(crate) mod loadtest;
pub(crate) mod lookaside;
pub(crate) mod metrics;
pub(crate) mod policy;
pub(crate) mod provisioner;
pub(crate) mod registry;
pub(crate) mod replica_controls;
pub mod ring;
pub mod scheme;
pub(crate) mod snapshot;
pub mod table;
