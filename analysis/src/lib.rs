//! The analysis of issue 5: a load generator, real deployments driven by it, ring-only
//! simulations beside them, the policies under stress, and the charts and report
//! made from what was measured.

pub mod charts;
pub mod deploy;
pub mod experiments;
pub mod loadgen;
pub mod report;
pub mod results;
pub mod sim;
pub mod stress;
