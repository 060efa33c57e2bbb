//! One client connection: read a request head, pick replicas from the ring, relay
//! the exchange, repeat while the connection is kept alive.
//!
//! Each worker thread runs its connections on its own single-threaded runtime with
//! its own upstream connection pool, so nothing on this path is shared between
//! threads but the routing snapshot and atomic counters.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::body::{copy_body, CopyError, Pace};
use super::deadline::Deadline;
use super::hedge::{self, Hedging};
use super::http1::{self, Framing, HeadError, Peer, RequestInfo, MAX_HEADERS};
use super::pool::{Pool, PoolSlot};
use super::READ_CHUNK;
use crate::api;
use crate::backend::Backend;
use crate::backend::Resources;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::policy::settings::Hedge;
use crate::policy::Ask;
use crate::snapshot::{SharedSnapshot, Snapshot};

/// How long an admin call may take, queued behind others included.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Forwarding settings shared by every worker.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// How long an idle keep-alive client connection is kept open, and how long a
    /// body or a tunnel may go without moving a byte.
    pub idle_timeout: Duration,
    /// How long a client may take to send a request head once it started one, so a
    /// client that trickles bytes does not hold a connection forever.
    pub header_timeout: Duration,
    /// The largest request head accepted (`431` beyond).
    pub max_header_bytes: usize,
    /// The most client connections open at once, over all workers.
    pub max_connections: usize,
    /// The most client connections one address may hold open (`0`: no limit).
    pub max_connections_per_ip: usize,
    /// Where the admin API (`/rep`, `/add`, …) listens, on loopback.
    pub api_address: String,
    /// `--admin-listen` is set: `/add` and `/rm` are refused here, served there.
    pub admin_elsewhere: bool,
    /// Added to every request relayed to the admin API as `x-lb-relay`, so that its
    /// loopback listener serves this relay and no other local process.
    pub relay_secret: String,
}

/// What a worker's connections share: settings, the snapshot, the upstream pool.
pub struct Worker {
    pub config: ForwardConfig,
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    /// Idle upstream connections.
    pub(super) pool: Pool,
    /// This thread's hedging budget and recent response times.
    pub(super) hedging: Hedging,
}

impl Worker {
    /// A worker with an empty pool.
    pub fn new(
        config: ForwardConfig,
        snapshot: SharedSnapshot,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Worker {
            config,
            snapshot,
            metrics,
            shutdown,
            pool: Pool::default(),
            hedging: Hedging::default(),
        }
    }
}

/// Buffers and timers reused across the requests of one client connection.
struct Buffers {
    client_in: BytesMut,
    upstream_in: BytesMut,
    request_head: Vec<u8>,
    response_head: Vec<u8>,
    path: String,
    /// The idle or header deadline while a request head is awaited.
    client_deadline: Deadline,
    /// The response deadline while a response head is awaited.
    upstream_deadline: Deadline,
    /// When the current request's head was complete.
    started: Instant,
    /// `--idle-timeout`: how long a body, a tunnel or a write to the client may go
    /// without moving a byte.
    idle: Duration,
    /// The connection closes with part of a request body unread: see [`linger`].
    unread_body: bool,
    /// The current request's `X-Demand`, when the policy reads it.
    demand: Option<Resources>,
}

impl Buffers {
    /// Writes `bytes` to the client; `false` if that failed or the client read
    /// nothing for the idle timeout (one that stops reading must not hold its
    /// connection, and the exchange in flight, forever).
    async fn write_client(&mut self, client: &mut TcpStream, bytes: &[u8]) -> bool {
        Pace::on(&mut self.client_deadline, self.idle)
            .write(client, bytes)
            .await
    }

    /// [`Buffers::write_client`] for the response head in `response_head`.
    async fn write_head(&mut self, client: &mut TcpStream) -> bool {
        Pace::on(&mut self.client_deadline, self.idle)
            .write(client, &self.response_head)
            .await
    }
}

/// Why an exchange with one upstream ended without a response.
pub(super) enum Failure {
    /// Nothing reached the client; the next candidate may be tried if the request
    /// allows it.
    Upstream(String),
    /// The replica could not be connected to: nothing was sent, so any request,
    /// idempotent or not, may go to the next candidate.
    Connect(String),
    /// The replica did not answer in time.
    Timeout,
    /// The client went away or stalled: close its connection.
    Client,
    /// The client's body broke its framing (a malformed chunked body): `400`, and
    /// the upstream connection that saw part of it is closed, never pooled.
    BadBody(String),
    /// Part of a response already reached the client: all we can do is close.
    Midway,
}

/// Which server a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Api,
    /// A mutating admin call on the public address while `--admin-listen` is set.
    AdminElsewhere,
    Replicas,
}

/// Serves one client connection until it closes, errs, idles out or shutdown.
pub async fn serve(worker: Rc<Worker>, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut shutdown = worker.shutdown.clone();
    let peer = Peer::new(peer.ip());
    let now = Instant::now();
    let mut b = Buffers {
        client_in: BytesMut::with_capacity(READ_CHUNK),
        upstream_in: BytesMut::with_capacity(READ_CHUNK),
        request_head: Vec::with_capacity(1024),
        response_head: Vec::with_capacity(1024),
        path: String::new(),
        client_deadline: Deadline::new(now + worker.config.idle_timeout),
        upstream_deadline: Deadline::new(now + worker.config.response_timeout),
        started: now,
        idle: worker.config.idle_timeout,
        unread_body: false,
        demand: None,
    };
    let mut first = true;
    loop {
        let head = read_head(&worker, &mut client, &peer, &mut b, &mut shutdown, first).await;
        first = false;
        let (info, route, snap) = match head {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                let reply = error_reply(&ApiError::from(e), true);
                if b.write_client(&mut client, &reply).await {
                    linger(&mut client).await;
                }
                return;
            }
        };
        let keep_alive = match route {
            Route::Api => {
                let api = Target {
                    slot: PoolSlot::API,
                    address: &worker.config.api_address,
                    served_by: None,
                };
                match exchange(&worker, &mut client, &mut b, &info, api).await {
                    Ok((_, reusable_client)) => reusable_client,
                    Err(Failure::Upstream(e) | Failure::Connect(e)) => {
                        reply_error(
                            &mut client,
                            &mut b,
                            &info,
                            ApiError::Unavailable(format!("admin API: {e}")),
                        )
                        .await
                    }
                    Err(Failure::Timeout) => {
                        reply_error(&mut client, &mut b, &info, ApiError::GatewayTimeout).await
                    }
                    Err(Failure::BadBody(e)) => {
                        reply_error(&mut client, &mut b, &info, bad_body(e)).await
                    }
                    Err(Failure::Client | Failure::Midway) => false,
                }
            }
            Route::AdminElsewhere => {
                let err =
                    ApiError::Forbidden(format!("{} is served on the admin address only", b.path));
                reply_error(&mut client, &mut b, &info, err).await
            }
            Route::Replicas => forward(&worker, &snap, &mut client, &mut b, &info).await,
        };
        if !keep_alive || *shutdown.borrow() {
            if b.unread_body {
                linger(&mut client).await;
            }
            return;
        }
    }
}

/// How long a closing connection's unread request bytes are read and dropped.
const LINGER: Duration = Duration::from_secs(1);

/// Closes the write side, then reads and drops what the client still sends for a
/// moment. Closing a socket with unread bytes makes the kernel send a reset, which
/// can destroy the answer just written (a `400` for a bad body, a replica's early
/// `413`) before the client reads it: nginx's lingering close.
async fn linger(client: &mut TcpStream) {
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The answer to a request whose body broke its framing.
fn bad_body(e: String) -> ApiError {
    ApiError::bad(format!("malformed request body: {e}"))
}

/// Reads until a whole request head is in, and rewrites it for upstream.
/// `Ok(None)`: the client closed (or idled out, or shutdown began) between requests.
async fn read_head(
    worker: &Worker,
    client: &mut TcpStream,
    peer: &Peer,
    b: &mut Buffers,
    shutdown: &mut watch::Receiver<bool>,
    first: bool,
) -> Result<Option<Prepared>, HeadError> {
    // Between requests the wait is the keep-alive idle time; inside a head, the
    // header timeout from its first bytes. A new connection gets the header timeout
    // from the start: one that never sends a byte would otherwise hold a connection
    // slot for the whole idle time.
    let mut in_head = first;
    let wait = if first {
        worker.config.header_timeout
    } else {
        worker.config.idle_timeout
    };
    b.client_deadline.set(Instant::now() + wait);
    loop {
        if !b.client_in.is_empty() {
            if let Some(found) = prepare(worker, peer, b)? {
                b.started = Instant::now();
                return Ok(Some(found));
            }
            if !in_head {
                in_head = true;
                b.client_deadline
                    .set(Instant::now() + worker.config.header_timeout);
            }
        }
        b.client_in.reserve(READ_CHUNK);
        let read = tokio::select! {
            r = b.client_deadline.run(client.read_buf(&mut b.client_in)) => r,
            _ = shutdown.changed() => return Ok(None),
        };
        match read {
            Some(Ok(n)) if n > 0 => {}
            _ => return Ok(None),
        }
    }
}

/// A request ready to go: what it is, where it goes, and the snapshot it was read
/// against (loaded once per request).
type Prepared = (RequestInfo, Route, Arc<Snapshot>);

fn prepare(worker: &Worker, peer: &Peer, b: &mut Buffers) -> Result<Option<Prepared>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max = worker.config.max_header_bytes;
    let Some(req) = http1::parse_request(&b.client_in, &mut headers)? else {
        return if b.client_in.len() > max {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if req.head_len > max {
        return Err(HeadError::TooLarge);
    }
    let snap = worker.snapshot.load_full();
    // Computing a key costs (a random draw, a header or cookie scan): only when the
    // policy reads it. The same goes for a demand.
    let key = snap.picker.needs_key().then_some(&snap.settings.hash_key);
    b.demand = if snap.picker.needs_demand() {
        demand(&req)
    } else {
        None
    };
    let info = http1::rewrite_request(&req, peer, key, &mut b.request_head)?;
    let path = crate::hashkey::KeySource::path(&req);
    let route = if !api::is_admin(req.method, path) {
        Route::Replicas
    } else if worker.config.admin_elsewhere && api::is_mutating(req.method) {
        Route::AdminElsewhere
    } else {
        // The head ends in its blank line: the relay's credential goes before it.
        b.request_head.truncate(b.request_head.len() - 2);
        b.request_head
            .extend_from_slice(api::RELAY_HEADER.as_bytes());
        b.request_head.extend_from_slice(b": ");
        b.request_head
            .extend_from_slice(worker.config.relay_secret.as_bytes());
        b.request_head.extend_from_slice(b"\r\n\r\n");
        Route::Api
    };
    b.path.clear();
    b.path.push_str(path);
    b.client_in.advance(info.head_len);
    Ok(Some((info, route, snap)))
}

/// A request's `X-Demand`, if it has a well-formed one.
fn demand(req: &http1::Request<'_, '_>) -> Option<Resources> {
    let value = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-demand"))?
        .value;
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Sends a request to the policy's candidates in turn until one answers, racing the
/// first two when the request may be hedged.
/// Returns whether the client connection stays open.
async fn forward(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
) -> bool {
    if snap.picker.is_empty() {
        let err = ApiError::Unavailable("No replica is available".into());
        return reply_error(client, b, info, err).await;
    }
    let mut last_error = None;
    let ask = Ask {
        key: info.request_id,
        // Random bits cost a little: only load-aware policies read them.
        draw: if snap.picker.needs_key() {
            0
        } else {
            rand::random()
        },
        now: b.started.into_std(),
        demand: b.demand.as_ref(),
    };
    let mut candidates = snap.picker.candidates(&ask).peekable();
    let mut tried = 0;
    if let Some(delay) = hedge_delay(worker, snap, info, b.started) {
        if let Some(first) = candidates.next() {
            tried += 1;
            let finished = hedge::race(
                worker,
                first,
                &mut candidates,
                &b.request_head,
                info,
                b.started,
                delay,
            )
            .await;
            for (backend, result) in finished {
                let result = match result {
                    Ok(head) => relay_head(worker, client, b, info, backend, head).await,
                    Err(f) => Err(f),
                };
                match settle(worker, snap, client, b, info, backend, result).await {
                    Settled::Answered(keep_alive) => return keep_alive,
                    Settled::TryNext(e) => last_error = Some(e),
                    Settled::GiveUp(e) => return give_up(client, b, info, Some(e)).await,
                }
            }
        }
    }
    for backend in candidates {
        if tried > 0 {
            worker.metrics.retries.inc();
        }
        tried += 1;
        let result = {
            let _in_flight = backend.track();
            exchange(worker, client, b, info, hedge::target(backend)).await
        };
        match settle(worker, snap, client, b, info, backend, result).await {
            Settled::Answered(keep_alive) => return keep_alive,
            Settled::TryNext(e) => last_error = Some(e),
            Settled::GiveUp(e) => {
                last_error = Some(e);
                break;
            }
        }
    }
    give_up(client, b, info, last_error).await
}

/// How long to wait before hedging this request, if it may be hedged: idempotent,
/// no body, no upgrade, hedging on, and (for a percentile) enough samples.
fn hedge_delay(
    worker: &Worker,
    snap: &Snapshot,
    info: &RequestInfo,
    started: Instant,
) -> Option<Duration> {
    let hedge = snap.settings.hedge?;
    if !info.retryable || info.upgrade || info.framing != Framing::Empty {
        return None;
    }
    worker.hedging.earn(snap.settings.hedge_budget, started);
    worker.hedging.delay(hedge)
}

/// Relays the response whose head a hedged attempt read.
async fn relay_head(
    worker: &Worker,
    client: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    backend: &Backend,
    head: hedge::Head,
) -> Result<(u16, bool), Failure> {
    let hedge::Head {
        upstream,
        mut input,
        head,
        res,
    } = head;
    std::mem::swap(&mut b.upstream_in, &mut input);
    b.response_head = head;
    // The head is already consumed from `input`: relay starts past it.
    let res = http1::ResponseInfo { head_len: 0, ..res };
    relay(
        worker,
        client,
        upstream,
        b,
        info,
        hedge::target(backend),
        res,
    )
    .await
}

/// What one attempt's outcome means for the request.
enum Settled {
    /// The client has its answer; whether its connection stays open.
    Answered(bool),
    /// The replica failed before answering (why): the next candidate may try.
    TryNext(String),
    /// The replica failed after the request went out and it cannot be sent again.
    GiveUp(String),
}

/// Records one attempt's outcome in its backend's figures and the metrics, and
/// answers the client when the outcome is final.
async fn settle(
    worker: &Worker,
    snap: &Snapshot,
    client: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    backend: &Backend,
    result: Result<(u16, bool), Failure>,
) -> Settled {
    let metrics = &worker.metrics;
    let now = Instant::now();
    let took = now - b.started;
    match result {
        Ok((status, keep_alive)) => {
            // A tunnel's lifetime is not a response time.
            if status != 101 {
                metrics.latency.observe(took.as_secs_f64());
                backend.counters.observe(took);
                backend.observe_response(status, took, now.into_std());
                if matches!(snap.settings.hedge, Some(Hedge::Percentile(_))) {
                    worker.hedging.record(took);
                }
            }
            backend.counters.response(status);
            backend.clear_failures();
            if status == 404 {
                let err = ApiError::UnknownEndpoint(b.path.clone());
                return Settled::Answered(reply_error(client, b, info, err).await && keep_alive);
            }
            Settled::Answered(keep_alive)
        }
        Err(failure @ (Failure::Upstream(_) | Failure::Connect(_))) => {
            let (e, sent) = match failure {
                Failure::Connect(e) => (format!("connect: {e}"), false),
                Failure::Upstream(e) => (e, true),
                _ => unreachable!("matched above"),
            };
            backend.counters.error();
            backend.observe_failure(took, false, now.into_std());
            if backend.record_failure() {
                metrics.ejections.inc();
                log::warn!("{} ejected after failed requests", backend.hostname);
            }
            log::debug!("{} failed: {e}", backend.hostname);
            let error = format!("{}: {e}", backend.hostname);
            if sent && !info.retryable {
                Settled::GiveUp(error)
            } else {
                Settled::TryNext(error)
            }
        }
        Err(Failure::Timeout) => {
            backend.counters.error();
            backend.observe_failure(took, true, now.into_std());
            let answered = reply_error(client, b, info, ApiError::GatewayTimeout).await;
            Settled::Answered(answered)
        }
        Err(Failure::BadBody(e)) => {
            Settled::Answered(reply_error(client, b, info, bad_body(e)).await)
        }
        Err(Failure::Client | Failure::Midway) => Settled::Answered(false),
    }
}

/// The `502` when no candidate answered.
async fn give_up(
    client: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    last_error: Option<String>,
) -> bool {
    let last_error = last_error.unwrap_or_else(|| "no candidate".into());
    reply_error(client, b, info, ApiError::BadGateway(last_error)).await
}

/// Writes an error of ours; returns whether the connection stays open.
async fn reply_error(
    client: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    err: ApiError,
) -> bool {
    // An unread request body would be taken for the next request: close instead.
    let close = !info.keep_alive || info.framing != Framing::Empty;
    b.unread_body |= info.framing != Framing::Empty;
    b.write_client(client, &error_reply(&err, close)).await && !close
}

/// A whole response carrying one of our errors.
pub fn error_reply(err: &ApiError, close: bool) -> Vec<u8> {
    http1::simple_response(
        err.status(),
        err.reason(),
        "application/json",
        &err.body(),
        close,
    )
}

/// Where one exchange goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    /// Where its idle connections are pooled.
    pub slot: PoolSlot,
    pub address: &'a str,
    /// The hostname a replica answers as; `None` for the admin API.
    pub served_by: Option<&'a str>,
}

/// One request and its response over one upstream connection. A 404 from a replica
/// is not relayed (the caller answers it); everything else is. Returns the status
/// and whether the client connection stays open.
async fn exchange(
    worker: &Worker,
    client: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    to: Target<'_>,
) -> Result<(u16, bool), Failure> {
    // A pooled connection may have been closed by the server since, unnoticed; a
    // request that can be sent again is retried once on a fresh connection then.
    let mut pooled = worker.pool.checkout(to.slot, to.address, b.started);
    loop {
        let reused = pooled.is_some();
        let mut upstream = match pooled.take() {
            Some(c) => c,
            None => connect(to.address, worker.config.connect_timeout).await?,
        };
        match send_and_read_head(worker, client, &mut upstream, b, info, to.served_by).await {
            Ok(res) => return relay(worker, client, upstream, b, info, to, res).await,
            Err(Failure::Upstream(_)) if reused && info.retryable => continue,
            Err(f) => return Err(f),
        }
    }
}

pub(super) async fn connect(address: &str, timeout: Duration) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(c)) => {
            let _ = c.set_nodelay(true);
            Ok(c)
        }
        Ok(Err(e)) => Err(Failure::Connect(e.to_string())),
        Err(_) => Err(Failure::Connect("timed out".into())),
    }
}

/// Sends the head and body, then reads until a final response head is in,
/// relaying any 1xx interim response (`100 Continue`) on the way.
async fn send_and_read_head(
    worker: &Worker,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    served_by: Option<&str>,
) -> Result<http1::ResponseInfo, Failure> {
    if let Err(e) = upstream.write_all(&b.request_head).await {
        return Err(Failure::Upstream(format!("write: {e}")));
    }
    b.upstream_in.clear();
    let body_sent =
        info.framing == Framing::Empty || send_body(client, upstream, b, info, served_by).await?;
    // An answer before the whole body: the rest is never read, so neither
    // connection can carry another request.
    b.unread_body |= !body_sent;
    // Only replicas name themselves; the admin API's calls are applied one at a
    // time and may queue behind slow container starts, so they get a longer bound.
    let timeout = if served_by.is_some() {
        worker.config.response_timeout
    } else {
        ADMIN_TIMEOUT
    };
    // Sending a body can take long; the answer is awaited from when it was sent.
    let sent = if info.framing == Framing::Empty {
        b.started
    } else {
        Instant::now()
    };
    b.upstream_deadline.set(sent + timeout);
    let client_closes = !info.keep_alive || !body_sent;
    loop {
        let parsed = http1::rewrite_response(
            &b.upstream_in,
            info.is_head,
            served_by,
            client_closes,
            &mut b.response_head,
        )
        .map_err(|e| Failure::Upstream(e.to_string()))?;
        if let Some(mut res) = parsed {
            if res.status == 101 {
                if info.upgrade {
                    return Ok(res);
                }
                return Err(Failure::Upstream("switched protocols unasked".into()));
            }
            if (100..200).contains(&res.status) {
                if !b.write_head(client).await {
                    return Err(Failure::Client);
                }
                b.upstream_in.advance(res.head_len);
                continue;
            }
            // A refused upgrade leaves the replica's parser in a state we cannot know
            // (actix reads on as if switched): that connection is not reused.
            res.reusable &= body_sent && !info.upgrade;
            return Ok(res);
        }
        b.upstream_in.reserve(READ_CHUNK);
        match b
            .upstream_deadline
            .run(upstream.read_buf(&mut b.upstream_in))
            .await
        {
            Some(Ok(0)) if !body_sent => {
                return Err(Failure::Upstream("stopped reading the body".into()))
            }
            Some(Ok(0)) => return Err(Failure::Upstream("closed before answering".into())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failure::Upstream(format!("read: {e}"))),
            None => return Err(Failure::Timeout),
        }
    }
}

/// Sends the request body while listening to the replica, and returns whether all
/// of it went. A `100 Continue` is relayed at once: a client that sent `Expect:
/// 100-continue` waits for it before sending its body. A final answer before the
/// body is all sent (a `413`, a `401`) ends the upload there, and so does a replica
/// that stops reading; its answer is then read as usual.
async fn send_body(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    served_by: Option<&str>,
) -> Result<bool, Failure> {
    let Buffers {
        client_in,
        upstream_in,
        response_head,
        client_deadline,
        idle,
        ..
    } = b;
    let idle = *idle;
    let (mut from_client, mut to_client) = client.split();
    let (mut from_upstream, mut to_upstream) = upstream.split();
    let pace = Pace::on(client_deadline, idle);
    let copy = copy_body(
        info.framing,
        client_in,
        &mut from_client,
        &mut to_upstream,
        pace,
    );
    tokio::pin!(copy);
    loop {
        upstream_in.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            read = from_upstream.read_buf(upstream_in) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Ok(false);
                }
                while let Some(res) =
                    http1::rewrite_response(upstream_in, info.is_head, served_by, true, response_head)
                        .map_err(|e| Failure::Upstream(e.to_string()))?
                {
                    if !(100..200).contains(&res.status) || res.status == 101 {
                        return Ok(false);
                    }
                    let relayed = tokio::time::timeout(idle, to_client.write_all(response_head));
                    if !matches!(relayed.await, Ok(Ok(()))) {
                        return Err(Failure::Client);
                    }
                    upstream_in.advance(res.head_len);
                }
            }
            copied = &mut copy => return match copied {
                Ok(()) => Ok(true),
                Err(CopyError::Source(e)) => {
                    log::debug!("reading the request body: {e}");
                    Err(Failure::Client)
                }
                Err(CopyError::Framing(e)) => Err(Failure::BadBody(e)),
                Err(CopyError::Sink) => Ok(false),
            },
        }
    }
}

/// Relays a response whose head is in `b.upstream_in`, then pools the upstream
/// connection if it can carry another request.
async fn relay(
    worker: &Worker,
    client: &mut TcpStream,
    mut upstream: TcpStream,
    b: &mut Buffers,
    info: &RequestInfo,
    to: Target<'_>,
    res: http1::ResponseInfo,
) -> Result<(u16, bool), Failure> {
    b.upstream_in.advance(res.head_len);
    if res.status == 101 {
        return tunnel(client, upstream, b).await.map(|()| (101, false));
    }
    let client_keeps = info.keep_alive && res.framing != Framing::UntilClose && !b.unread_body;
    if res.status == 404 && to.served_by.is_some() {
        // Answered by the caller; the body is not read, so the connection is dropped.
        return Ok((404, client_keeps));
    }
    // A small body already read with its head goes out in the same write.
    if let Framing::Length(n) = res.framing {
        if n as usize <= b.upstream_in.len() {
            let n = n as usize;
            b.response_head.extend_from_slice(&b.upstream_in[..n]);
            b.upstream_in.advance(n);
            // The replica is done: its connection goes back before a slow client
            // can hold it.
            give_back(worker, to, upstream, b, res);
            if !b.write_head(client).await {
                return Err(Failure::Midway);
            }
            return Ok((res.status, client_keeps));
        }
    }
    if !b.write_head(client).await {
        return Err(Failure::Midway);
    }
    let body = Pace::on(&mut b.upstream_deadline, b.idle);
    match copy_body(res.framing, &mut b.upstream_in, &mut upstream, client, body).await {
        Ok(()) => {}
        Err(CopyError::Source(e) | CopyError::Framing(e)) => {
            log::debug!("{} broke off its response: {e}", to.address);
            return Err(Failure::Midway);
        }
        Err(CopyError::Sink) => return Err(Failure::Midway),
    }
    give_back(worker, to, upstream, b, res);
    Ok((res.status, client_keeps))
}

/// Pools the upstream connection of a finished exchange if it can carry another
/// request: the replica keeps it open and sent nothing past the response.
fn give_back(
    worker: &Worker,
    to: Target<'_>,
    upstream: TcpStream,
    b: &Buffers,
    res: http1::ResponseInfo,
) {
    if res.reusable && b.upstream_in.is_empty() {
        worker
            .pool
            .checkin(to.slot, to.address, upstream, b.started);
    }
}

/// After a `101 Switching Protocols`: relays the head, then bytes both ways until
/// either side closes or both stay silent for the idle timeout. Nothing can be
/// retried from here on.
async fn tunnel(
    client: &mut TcpStream,
    mut upstream: TcpStream,
    b: &mut Buffers,
) -> Result<(), Failure> {
    if !b.write_head(client).await {
        return Err(Failure::Midway);
    }
    // Bytes that came with the 101, or that the client sent after its handshake.
    let mut pace = Pace::on(&mut b.client_deadline, b.idle);
    for (dst, early) in [
        (&mut *client, &mut b.upstream_in),
        (&mut upstream, &mut b.client_in),
    ] {
        if !pace.write(dst, early).await {
            return Err(Failure::Midway);
        }
        early.clear();
    }
    match super::tunnel::relay(client, &mut upstream, b.idle).await {
        Ok(()) => Ok(()),
        Err(e) => {
            log::debug!("tunnel ended: {e}");
            Err(Failure::Midway)
        }
    }
}
