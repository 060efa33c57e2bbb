//! The analysis of issue 5: a load generator (HTTP, and a look-aside gRPC client),
//! real deployments driven by it, ring-only simulations beside them, the policies
//! under stress, look-aside against the proxy, and the charts and report
//! made from what was measured.

pub mod a6;
pub mod charts;
pub mod deploy;
pub mod experiments;
pub mod loadgen;
pub mod lookaside;
pub mod report;
pub mod results;
pub mod sim;
pub mod stress;
