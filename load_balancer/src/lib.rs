//! A consistent-hashing HTTP load balancer that runs, watches and replaces its own
//! replicas.
//!
//! The pure core: [`ring`], [`table`] and [`scheme`] (placement and lookup), [`hashkey`] (where a
//! request's id comes from), [`admin`] (validation and planning of `/add` and `/rm`).
//! The edges around it: [`runtime`] (who runs replicas), [`supervisor`] (keeps them
//! alive), [`health`] (heartbeats), [`metrics`] (Prometheus), [`dataplane`] (the listener clients talk to, and forwarding), [`api`] (HTTP), [`app`]
//! (wiring them together from a [`config::Config`]).

pub mod admin;
pub mod api;
pub mod app;
pub mod backend;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod hashkey;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod ring;
pub mod runtime;
pub mod scheme;
pub mod snapshot;
pub mod supervisor;
pub mod table;
