//! The HTTP surface: `/rep`, `/add`, `/rm`, `/status`, and forwarding of the rest.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::admin::{self, Op, MAX_BODY};
use crate::dashboard;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::policy::HASH_POLICIES;
use crate::registry::cluster::{ManagedAccess, Target};
use crate::registry::registered::{parse_deregistration, parse_registration, RegisteredHandle};
use crate::registry::RegistryHandle;
use crate::replica_controls;
use crate::snapshot::{ReplicaStatus, SharedSnapshot, Snapshot};

/// What every handler shares.
pub struct AppState {
    pub snapshot: SharedSnapshot,
    /// Where `/add`, `/rm` and replica controls are carried out: here, or by the
    /// cluster's leader.
    pub managed: ManagedAccess,
    /// Where `PUT /policy` goes.
    pub registry: RegistryHandle,
    /// Where `POST` and `DELETE /register` go.
    pub registered: RegisteredHandle,
    pub metrics: std::sync::Arc<Metrics>,
    /// When set, every call that changes something needs `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// Shown in `/status`.
    pub runtime: &'static str,
    /// The loopback listener the data plane relays admin calls to.
    pub internal: std::net::SocketAddr,
    /// What the relay sends in [`RELAY_HEADER`]; random per process.
    pub relay_secret: String,
    /// Relays `/replicas/<name>/control` to replicas.
    pub control_client: crate::replica_controls::ControlClient,
    /// The dashboard's frames, for `/events`.
    pub feed: crate::dashboard::feed::Feed,
    /// The built-in load test.
    pub loadtest: crate::loadtest::LoadTester,
}

/// The header by which the data plane's relay proves itself to the internal
/// listener, which any local process could otherwise call.
pub const RELAY_HEADER: &str = "x-lb-relay";

/// A fresh relay secret: 128 random bits, in hex.
pub fn relay_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Middleware: on the internal listener, only the data plane's relay is served, so
/// `--admin-listen` (and the public address's refusal of `/add` and `/rm` with it)
/// cannot be bypassed by calling the API's loopback port directly.
pub async fn only_the_relay_inside(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let refused = req.app_data::<web::Data<AppState>>().is_some_and(|state| {
        req.app_config().local_addr() == state.internal
            && !req
                .headers()
                .get_all(RELAY_HEADER)
                .any(|v| bool::from(v.as_bytes().ct_eq(state.relay_secret.as_bytes())))
    });
    if refused {
        let why =
            "this address serves the balancer's own relay only: use its public or admin address";
        return Err(ApiError::Forbidden(why.into()).into());
    }
    next.call(req).await
}

/// Declares the admin routes once: the list the data plane matches requests against,
/// and their registration on the actix app, so the two cannot drift apart.
macro_rules! admin_routes {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// The balancer's own endpoints; every other method and path goes to a replica.
        pub const ADMIN_ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// Registers every route of [`ADMIN_ROUTES`] on an actix `App`.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::method(actix_web::http::Method::$method).to($handler));)*
            cfg.default_service(web::to(not_admin));
        }
    };
}

admin_routes! {
    GET "/rep" => rep,
    GET "/status" => status,
    GET "/metrics" => metrics,
    GET "/policy" => policy,
    PUT "/policy" => set_policy,
    POST "/register" => register,
    DELETE "/register" => deregister,
    POST "/add" => add,
    DELETE "/rm" => remove,
    GET "/dashboard" => dashboard::page,
    GET "/events" => dashboard::events,
    GET "/ring" => dashboard::ring,
    GET "/loadtest" => dashboard::loadtest,
    POST "/loadtest" => dashboard::start_loadtest,
    DELETE "/loadtest" => dashboard::stop_loadtest,
    POST "/replicas/{name}/disable" => replica_controls::disable,
    POST "/replicas/{name}/enable" => replica_controls::enable,
    GET "/replicas/{name}/control" => replica_controls::control,
    POST "/replicas/{name}/control" => replica_controls::control,
}

/// Whether a request is for the balancer itself rather than a replica.
pub fn is_admin(method: &str, path: &str) -> bool {
    ADMIN_ROUTES
        .iter()
        .any(|(m, pattern)| *m == method && matches_route(pattern, path))
}

/// Whether `path` fits a route `pattern`, where a `{name}` segment stands for any one
/// non-empty segment.
fn matches_route(pattern: &str, path: &str) -> bool {
    let (mut want, mut got) = (pattern.split('/'), path.split('/'));
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// Whether an admin call changes the replica set (and so may need its own address).
pub fn is_mutating(method: &str) -> bool {
    method != "GET"
}

pub(crate) fn successful(message: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({"message": message, "status": "successful"}))
}

fn rep_body(snap: &Snapshot) -> HttpResponse {
    let replicas = snap.hostnames();
    successful(json!({"N": replicas.len(), "replicas": replicas}))
}

async fn rep(state: web::Data<AppState>) -> HttpResponse {
    rep_body(&state.snapshot.load())
}

/// One replica in `/status`: what the registry knows, and its live figures when it
/// has them (routable or disabled).
pub(crate) fn replica_status(
    snap: &Snapshot,
    r: &ReplicaStatus,
    now: Instant,
) -> serde_json::Value {
    let mut v = json!(r);
    let figures = snap.figures_of(r.id).map(|b| {
        json!({
            "enabled": b.enabled(),
            "in_flight": b.load(),
            "latency_ms": b.latency(now).as_secs_f64() * 1000.0,
            "error_rate": b.error_rate(now),
            "score": b.score(now),
            "reported_load": b.reported_load(),
            "available": b.available(),
            "weight": b.weight(),
            "capacity": b.capacity().to_string(),
        })
    });
    if let (Some(map), Some(serde_json::Value::Object(f))) = (v.as_object_mut(), figures) {
        map.extend(f);
    }
    v
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    let snap = state.snapshot.load();
    let now = Instant::now();
    let policy = snap.settings.policy;
    successful(json!({
        "N": snap.replicas.len(),
        "replicas": snap.replicas.iter().map(|r| replica_status(&snap, r, now)).collect::<Vec<_>>(),
        "runtime": state.runtime,
        "policy": policy,
        "hash": HASH_POLICIES.contains(&policy).then_some(policy),
        "hash_key": snap.settings.hash_key.to_string(),
        "cluster": state.managed.describe(),
    }))
}

async fn policy(state: web::Data<AppState>) -> HttpResponse {
    successful(state.snapshot.load().settings.view())
}

/// `PUT /policy`: authorize, read and parse the body, let the registry apply it.
async fn set_policy(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = authorized_body(&state, &req, payload).await?;
    let body: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("Invalid JSON body: {e}")))?;
    let settings = state.registry.update_policy(body).await?;
    Ok(successful(settings.view()))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&state.snapshot.load()))
}

async fn add(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    scale(&state, &req, payload, Op::Add).await
}

async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    scale(&state, &req, payload, Op::Remove).await
}

/// `/add` and `/rm`: authorize, read and validate the body, apply it whole.
async fn scale(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    op: Op,
) -> Result<HttpResponse, ApiError> {
    let body = authorized_body(state, req, payload).await?;
    let request = admin::parse(&body, op)?;
    let managed = match state.managed.target()? {
        Target::Here(managed) => managed,
        Target::Leader(leader) => return to_leader(state, req, &leader, body.freeze()).await,
    };
    match op {
        Op::Add => managed.add(request).await?,
        Op::Remove => managed.remove(request).await?,
    }
    Ok(rep_body(&state.snapshot.load()))
}

/// Sends an admin call on to the cluster's leader, which alone changes the replica
/// set, and answers with its answer.
pub(crate) async fn to_leader(
    state: &AppState,
    req: &HttpRequest,
    leader: &str,
    body: bytes::Bytes,
) -> Result<HttpResponse, ApiError> {
    let uri = format!("http://{leader}{}", req.uri());
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    crate::replica_controls::relay(
        &state.control_client,
        req,
        uri,
        auth,
        body,
        "the cluster's leader",
    )
    .await
}

/// `POST /register`: a backend that speaks HTTP only joins (or renews) for a TTL.
async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = authorized_body(&state, &req, payload).await?;
    let registered = state
        .registered
        .register(parse_registration(&body)?)
        .await?;
    Ok(successful(json!(registered)))
}

/// `DELETE /register`: a registered backend leaves at once.
async fn deregister(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = authorized_body(&state, &req, payload).await?;
    let name = state
        .registered
        .deregister(parse_deregistration(&body)?)
        .await?;
    Ok(successful(json!({ "name": name })))
}

/// Only reached by a request sent to the API's own address, which the data plane
/// never does for other paths.
async fn not_admin(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::UnknownEndpoint(req.path().to_string()))
}

pub(crate) fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The body of a call that changes something: authorized first, so an anonymous
/// caller never gets to send one.
pub(crate) async fn authorized_body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<BytesMut, ApiError> {
    authorize(state, req)?;
    read_body(req, payload).await
}

/// Reads an admin body, refusing it as soon as it passes [`MAX_BODY`].
pub(crate) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<BytesMut, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit: MAX_BODY };
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("Could not read the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_routes_match_their_paths_with_a_name_in_place_of_a_pattern() {
        assert!(is_admin("GET", "/rep"));
        assert!(!is_admin("POST", "/rep"));
        assert!(is_admin("POST", "/replicas/Server2/disable"));
        assert!(is_admin("GET", "/replicas/S-5/control"));
        assert!(!is_admin("POST", "/replicas//disable"));
        assert!(!is_admin("POST", "/replicas/Server2/disable/more"));
        assert!(!is_admin("POST", "/replicas/Server2"));
        assert!(!is_admin("GET", "/home"));
    }
}
