//! `/replicas/<name>/…`: an operator's hands on one replica. `disable` keeps new
//! requests away from it (those in flight finish, it keeps running and stays in
//! `/rep`), `enable` undoes it, and `control` is relayed to the replica's own
//! `/control`, whatever runs it, so faults can be injected into containers the host
//! cannot reach.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::api::{authorize, read_body, to_leader, AppState};
use crate::error::ApiError;
use crate::registry::cluster::Target;

/// How long a replica may take to answer a relayed `/control`.
const RELAY_TIMEOUT: Duration = Duration::from_secs(10);

/// The client that relays `/control` to replicas.
#[derive(Clone)]
pub struct ControlClient(Client<HttpConnector, Full<Bytes>>);

impl Default for ControlClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        ControlClient(Client::builder(TokioExecutor::new()).build(connector))
    }
}

/// `POST /replicas/<name>/disable`.
pub async fn disable(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<(String,)>,
) -> Result<HttpResponse, ApiError> {
    switch(&state, &req, name.into_inner().0, false).await
}

/// `POST /replicas/<name>/enable`.
pub async fn enable(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<(String,)>,
) -> Result<HttpResponse, ApiError> {
    switch(&state, &req, name.into_inner().0, true).await
}

async fn switch(
    state: &AppState,
    req: &HttpRequest,
    name: String,
    enabled: bool,
) -> Result<HttpResponse, ApiError> {
    authorize(state, req)?;
    match state.managed.target()? {
        Target::Here(managed) => managed.enable(name.clone(), enabled).await?,
        Target::Leader(leader) => return to_leader(state, req, &leader, Bytes::new()).await,
    }
    let snap = state.snapshot.load();
    let status = snap
        .replicas
        .iter()
        .find(|r| r.hostname == name)
        .ok_or(ApiError::UnknownReplica(name))?;
    Ok(crate::api::successful(serde_json::json!(status)))
}

/// `GET` or `POST /replicas/<name>/control`: relayed to the replica's `/control`
/// with its query and body; the replica's status and body come back.
pub async fn control(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<(String,)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner().0;
    let mutating = req.method() != actix_web::http::Method::GET || !req.query_string().is_empty();
    if mutating {
        authorize(&state, &req)?;
    }
    let body = read_body(&req, payload).await?;
    let address = {
        let snap = state.snapshot.load();
        let replica = snap
            .replicas
            .iter()
            .find(|r| r.hostname == name)
            .ok_or_else(|| ApiError::UnknownReplica(name.clone()))?;
        replica
            .address
            .clone()
            .ok_or_else(|| ApiError::Unavailable(format!("{name} is not running")))?
    };
    let query = match req.query_string() {
        "" => String::new(),
        q => format!("?{q}"),
    };
    let uri = format!("http://{address}/control{query}");
    relay(&state.control_client, &req, uri, None, body.freeze(), &name).await
}

/// Sends a call on to `uri` (with `authorization`, if any) and answers with the
/// status and body that come back; `who` names the far end in errors.
pub(crate) async fn relay(
    client: &ControlClient,
    req: &HttpRequest,
    uri: String,
    authorization: Option<&str>,
    body: Bytes,
    who: &str,
) -> Result<HttpResponse, ApiError> {
    let unreachable = |e: String| ApiError::BadGateway(format!("{who}: {e}"));
    let mut relayed = hyper::Request::builder()
        .method(req.method().as_str())
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(auth) = authorization {
        relayed = relayed.header("authorization", auth);
    }
    let relayed = relayed
        .body(Full::new(body))
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = tokio::time::timeout(RELAY_TIMEOUT, async {
        let res = client.0.request(relayed).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body.to_bytes()))
    })
    .await
    .map_err(|_| ApiError::GatewayTimeout)?
    .map_err(unreachable)?;
    let status =
        actix_web::http::StatusCode::from_u16(answer.0).map_err(|e| unreachable(e.to_string()))?;
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(answer.1))
}
