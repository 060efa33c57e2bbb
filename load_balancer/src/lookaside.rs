//! The look-aside gRPC service (`loadbalancer.LoadBalancer` on `--grpc-listen`):
//! clients ask which backend to call and then call it themselves; backends register
//! and report their load. `GetBestServer` reads the same snapshot and the same
//! policies as the HTTP data plane, so a replica is chosen the same way whether a
//! client asks or the proxy forwards. `grpc.health.v1` is served beside it.
//!
//! Errors become gRPC statuses here and nowhere else.

use std::time::{Duration, Instant};

use lb_proto::load_balancer_server::{LoadBalancer, LoadBalancerServer};
use lb_proto::{
    BalanceRequest, LoadBalanceStrategy, LoadResponse, RegisterResponse, ServerInfo, ServerLoad,
};
use tonic::{Request, Response, Status};

use crate::hashkey::{key_to_id, random_id};
use crate::policy::Ask;
use crate::registry::registered::{RegisteredHandle, Registration, RegistrationError};
use crate::snapshot::SharedSnapshot;

/// The policy a strategy names, or why it is refused.
pub fn strategy_policy(strategy: i32) -> Result<&'static str, Status> {
    use LoadBalanceStrategy as S;
    let known = S::try_from(strategy).map_err(|_| {
        Status::invalid_argument(format!(
            "unknown strategy {strategy}: see LoadBalanceStrategy"
        ))
    })?;
    Ok(match known {
        S::PickFirst => "pick-first",
        S::RoundRobin => "round-robin",
        S::LeastLoad => "least-load",
        S::WeightedRoundRobin => "weighted-round-robin",
        S::Random => "random",
        S::LeastConnections => "least-connections",
        S::P2cEwma => "p2c-ewma",
        S::ResponseTime => "response-time",
        S::HealthScore => "health-score",
        S::FailureWeightedRoundRobin => "failure-weighted-round-robin",
        S::ResourceFit => "resource-fit",
        S::Quadratic => "quadratic",
        S::Mixed => "mixed",
        S::Maglev => "maglev",
        S::Rendezvous => "rendezvous",
    })
}

impl From<RegistrationError> for Status {
    fn from(e: RegistrationError) -> Self {
        let text = e.to_string();
        match e {
            RegistrationError::Unknown(_) => Status::not_found(text),
            RegistrationError::Stopping => Status::unavailable(text),
            RegistrationError::Refused(crate::error::ApiError::Conflict(_)) => {
                Status::already_exists(text)
            }
            RegistrationError::Refused(crate::error::ApiError::BadRequest(ref m))
                if m.starts_with("Cannot add") =>
            {
                Status::resource_exhausted(text)
            }
            _ => Status::invalid_argument(text),
        }
    }
}

/// The service: registrations go to the registered source, answers come from the
/// snapshot.
pub struct LookAside {
    snapshot: SharedSnapshot,
    registered: RegisteredHandle,
    /// How long a gRPC registration lasts without a report.
    ttl: Duration,
}

impl LookAside {
    /// A service over `snapshot`, registering through `registered`; a backend that
    /// stops reporting leaves after `ttl`.
    pub fn new(snapshot: SharedSnapshot, registered: RegisteredHandle, ttl: Duration) -> Self {
        LookAside {
            snapshot,
            registered,
            ttl,
        }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl LoadBalancer for LookAside {
    async fn register_server(
        &self,
        request: Request<ServerInfo>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let info = request.into_inner();
        if info.address.is_empty() {
            return Err(Status::invalid_argument("address is required"));
        }
        let r = self
            .registered
            .register(Registration {
                name: non_empty(info.name),
                grpc_address: Some(info.address),
                http_address: non_empty(info.http_address),
                ttl: self.ttl,
            })
            .await?;
        Ok(Response::new(RegisterResponse {
            message: format!("registered as {} (id {})", r.name, r.id),
        }))
    }

    async fn report_load(
        &self,
        request: Request<ServerLoad>,
    ) -> Result<Response<LoadResponse>, Status> {
        let load = request.into_inner();
        let name = self
            .registered
            .report(load.address, i64::from(load.load), load.available)
            .await?;
        Ok(Response::new(LoadResponse {
            message: format!("load of {name} recorded"),
        }))
    }

    async fn get_best_server(
        &self,
        request: Request<BalanceRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        let req = request.into_inner();
        let policy = strategy_policy(req.strategy)?;
        let snap = self.snapshot.load();
        let picker = snap
            .lookaside(policy)
            .ok_or_else(|| Status::internal(format!("no picker for {policy}")))?;
        let ask = Ask {
            key: req.key.as_deref().map_or_else(random_id, key_to_id),
            draw: rand::random(),
            now: Instant::now(),
            demand: None,
        };
        // Unlike the proxy, which would rather try an unavailable replica than
        // refuse, a client is never sent to one that said it cannot take work.
        let best = picker
            .candidates(&ask)
            .find(|b| b.selectable())
            .ok_or_else(|| Status::unavailable("no backend is available"))?;
        Ok(Response::new(ServerInfo {
            address: best.grpc_address.clone().unwrap_or_default(),
            name: best.hostname.clone(),
            http_address: snap
                .replicas
                .iter()
                .find(|r| r.id == best.id)
                .and_then(|r| r.address.clone())
                .unwrap_or_default(),
        }))
    }

    async fn deregister_server(
        &self,
        request: Request<ServerInfo>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let info = request.into_inner();
        let who = non_empty(info.name)
            .or(non_empty(info.address))
            .ok_or_else(|| Status::invalid_argument("a name or an address is required"))?;
        let name = self.registered.deregister(who).await?;
        Ok(Response::new(RegisterResponse {
            message: format!("{name} deregistered"),
        }))
    }
}

/// Serves the look-aside service and gRPC health on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: LookAside,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<LoadBalancerServer<LookAside>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(LoadBalancerServer::new(service))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_strategies_map_to_their_policies_and_unknown_values_are_refused() {
        assert_eq!(strategy_policy(0).unwrap(), "pick-first");
        assert_eq!(strategy_policy(1).unwrap(), "round-robin");
        assert_eq!(strategy_policy(2).unwrap(), "least-load");
        for s in 0..=14 {
            let name = strategy_policy(s).unwrap();
            assert!(crate::policy::names().any(|n| n == name), "{name}");
        }
        let err = strategy_policy(99).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
