//! A consistent-hashing HTTP load balancer that runs, watches and replaces its own
//! replicas.
//!
//! The pure core: [`ring`] and [`scheme`] (placement and lookup), [`hashkey`] (where a
//! request's id comes from), [`admin`] (validation and planning of `/add` and `/rm`).
//! The edges around it: [`runtime`] (who runs replicas), [`supervisor`] (keeps them
//! alive), [`health`] (heartbeats), [`metrics`] (Prometheus), [`proxy`] (forwarding), [`api`] (HTTP), [`app`]
//! (wiring them together from a [`config::Config`]).

pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod error;
pub mod hashkey;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod ring;
pub mod runtime;
pub mod scheme;
pub mod snapshot;
pub mod supervisor;
