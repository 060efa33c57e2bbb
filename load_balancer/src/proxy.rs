//! Forwarding: pick candidates from the ring, send the request to the first that
//! answers, stream the answer back.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::ApiError;
use crate::hashkey::{HashKey, KeySource};
use crate::metrics::Metrics;
use crate::snapshot::SharedSnapshot;

type UpstreamBody = UnsyncBoxBody<Bytes, io::Error>;

/// Headers that describe one connection, not the message; never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwarding settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub hash_key: HashKey,
    /// How long connecting to a replica may take before the next one is tried.
    pub connect_timeout: Duration,
    /// How long a replica may take to send its response headers.
    pub response_timeout: Duration,
}

/// The forwarding client: one keep-alive connection pool shared by all workers.
pub struct Proxy {
    client: Client<HttpConnector, UpstreamBody>,
    config: ProxyConfig,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// A proxy that routes by `snapshot`.
    pub fn new(config: ProxyConfig, snapshot: SharedSnapshot, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Proxy {
            client,
            config,
            snapshot,
            metrics,
        }
    }

    /// Forwards one request; see SPEC.md, "Every other path".
    pub async fn forward(
        &self,
        req: HttpRequest,
        payload: web::Payload,
    ) -> Result<HttpResponse, ApiError> {
        let snap = self.snapshot.load_full();
        if snap.routing.table.is_empty() {
            return Err(ApiError::Unavailable("No replica is available".into()));
        }
        let request_id = self.config.hash_key.request_id(&ActixRequest(&req));
        let has_body = has_body(&req);
        // A request with a body is streamed, so it can be sent only once.
        let retryable = is_idempotent(req.method()) && !has_body;
        let mut body = has_body.then(|| stream_body(payload));
        let mut last_error = String::from("no candidate");
        let started = Instant::now();
        for (attempt, backend) in snap.routing.candidates(request_id).enumerate() {
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            let upstream = match build_request(&req, &backend.address, body.take()) {
                Ok(r) => r,
                Err(e) => return Err(ApiError::bad(format!("Cannot forward this request: {e}"))),
            };
            let guard = backend.track();
            let sent =
                tokio::time::timeout(self.config.response_timeout, self.client.request(upstream))
                    .await;
            match sent {
                Ok(Ok(res)) => {
                    self.metrics
                        .latency
                        .observe(started.elapsed().as_secs_f64());
                    backend.counters.response(res.status().as_u16());
                    if backend.failures.load(Ordering::Relaxed) != 0 {
                        backend.failures.store(0, Ordering::Relaxed);
                    }
                    if res.status() == hyper::StatusCode::NOT_FOUND {
                        return Err(ApiError::UnknownEndpoint(req.path().to_string()));
                    }
                    return Ok(build_response(res, &backend.hostname, guard));
                }
                Ok(Err(e)) => {
                    backend.counters.error();
                    if backend.record_failure() {
                        self.metrics.ejections.inc();
                        log::warn!("{} ejected after failed requests", backend.hostname);
                    }
                    log::debug!("{} failed: {e}", backend.hostname);
                    last_error = format!("{}: {e}", backend.hostname);
                }
                Err(_) => {
                    backend.counters.error();
                    return Err(ApiError::GatewayTimeout);
                }
            }
            if !retryable {
                break;
            }
        }
        Err(ApiError::BadGateway(last_error))
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn has_body(req: &HttpRequest) -> bool {
    let headers = req.headers();
    headers.contains_key("transfer-encoding")
        || headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Streams the client's body upstream. actix's payload is bound to its worker
/// thread, so a local task pumps it into a channel the (thread-safe) client reads.
fn stream_body(mut payload: web::Payload) -> UpstreamBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(8);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            let item = chunk.map(Frame::data).map_err(io::Error::other);
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    StreamBody::new(Box::pin(stream)).boxed_unsync()
}

fn build_request(
    req: &HttpRequest,
    address: &str,
    body: Option<UpstreamBody>,
) -> Result<hyper::Request<UpstreamBody>, hyper::http::Error> {
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut builder = hyper::Request::builder()
        .method(req.method().as_str())
        .uri(format!("http://{address}{pq}"));
    let connection_listed = connection_tokens(req);
    for (name, value) in req.headers() {
        let n = name.as_str();
        if n == "host" || HOP_BY_HOP.contains(&n) || connection_listed.iter().any(|t| t == n) {
            continue;
        }
        if n.starts_with("x-forwarded-") {
            continue;
        }
        builder = builder.header(n, value.as_bytes());
    }
    let info = req.connection_info();
    let client_ip = req.peer_addr().map(|a| a.ip().to_string());
    let prior = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    if let Some(ip) = &client_ip {
        let xff = match prior {
            Some(p) => format!("{p}, {ip}"),
            None => ip.clone(),
        };
        builder = builder.header("x-forwarded-for", xff);
    }
    builder = builder
        .header("x-forwarded-proto", info.scheme())
        .header("x-forwarded-host", info.host());
    builder.body(body.unwrap_or_else(|| Empty::new().map_err(|e| match e {}).boxed_unsync()))
}

/// Header names listed in `Connection`, which are hop-by-hop for this message.
fn connection_tokens(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all("connection")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn build_response(
    res: hyper::Response<hyper::body::Incoming>,
    hostname: &str,
    guard: crate::snapshot::InFlight,
) -> HttpResponse {
    let (parts, body) = res.into_parts();
    let status = StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    let mut length = None;
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) {
            continue;
        }
        if n == "content-length" {
            length = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append_header((n, v));
        }
    }
    out.insert_header(("x-served-by", hostname));
    // The guard lives as long as the body stream: the request is in flight until
    // its last byte has gone back to the client.
    let stream = BodyStream::new(body).filter_map(move |frame| {
        let _held = &guard;
        std::future::ready(match frame {
            Ok(f) => f.into_data().ok().map(Ok),
            Err(e) => Some(Err(io::Error::other(e))),
        })
    });
    match length {
        Some(len) => out.body(SizedStream::new(len, Box::pin(stream))),
        None => out.streaming(stream),
    }
}

/// A request seen as a source of hash keys.
struct ActixRequest<'a>(&'a HttpRequest);

impl KeySource for ActixRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.headers().get(name).and_then(|v| v.to_str().ok())
    }
    fn query(&self) -> &str {
        self.0.query_string()
    }
    fn path(&self) -> &str {
        self.0.path()
    }
    fn client_ip(&self) -> Option<IpAddr> {
        self.0.peer_addr().map(|a| a.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn only_safe_methods_are_retried() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_not_forwarded() {
        let req = TestRequest::get()
            .uri("/home?id=1")
            .insert_header(("connection", "keep-alive, x-secret"))
            .insert_header(("x-secret", "1"))
            .insert_header(("te", "trailers"))
            .insert_header(("x-kept", "yes"))
            .peer_addr("10.0.0.9:1234".parse().unwrap())
            .to_http_request();
        let up = build_request(&req, "127.0.0.1:9", None).unwrap();
        assert_eq!(up.uri(), "http://127.0.0.1:9/home?id=1");
        let h = up.headers();
        assert!(h.get("connection").is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get("te").is_none());
        assert_eq!(h.get("x-kept").unwrap(), "yes");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn a_prior_forwarded_for_chain_is_extended() {
        let req = TestRequest::get()
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .peer_addr("10.0.0.9:1234".parse().unwrap())
            .to_http_request();
        let up = build_request(&req, "h:1", None).unwrap();
        assert_eq!(
            up.headers().get("x-forwarded-for").unwrap(),
            "1.2.3.4, 10.0.0.9"
        );
    }
}
