//! The look-aside gRPC protocol, generated from `proto/loadbalancer.proto`: the
//! balancer's `LoadBalancer` service and the backends' `BackendService`, as servers
//! and clients.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("loadbalancer");
