//! The live dashboard: `GET /dashboard` (one self-contained page), `GET /events`
//! (server-sent events it updates from), `GET /ring` (the ring laid out, or where a
//! key goes) and the built-in load test's endpoints (`/loadtest`).
//!
//! The page only reads until a person gives it the admin token; every action it
//! takes is an ordinary call of the admin API, refused or applied there.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::json;

pub mod feed;
pub mod figures;
pub mod ring_view;
pub mod view;

use crate::api::{authorized_body, is_admin, successful, AppState};
use crate::error::ApiError;
use crate::loadtest::plan;
use feed::Frame;

/// The page, inline styles and script included.
pub const PAGE: &str = include_str!("page.html");

/// Nothing but this balancer: no other host can serve the page anything, and it
/// can send nothing anywhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// `GET /dashboard`.
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(PAGE)
}

/// `GET /events`: `retry`, the samples the client has not seen (all, or those after
/// its `Last-Event-ID`), then a `state` event per frame until the client leaves or
/// the balancer stops.
pub async fn events(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok();
    let last_seen = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            query
                .as_ref()
                .and_then(|q| q.get("last_event_id"))
                .map(String::as_str)
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let (first, frames) = state.feed.subscribe();
    // A client that saw more samples than exist talked to an earlier balancer.
    let after = if last_seen > first.seq { 0 } else { last_seen };
    let samples: Vec<_> = first.samples.iter().filter(|s| s.seq > after).collect();
    let mut opening = String::from("retry: 1000\n\n");
    opening.push_str(&format!(
        "event: history\ndata: {}\n\n",
        json!({ "samples": samples })
    ));
    // Before the feed's first frame there is no state yet: the next frame brings it.
    if !first.state.is_empty() {
        opening.push_str(&state_event(&first));
    }
    let stream = futures_util::stream::unfold(
        (frames, first.version, Some(opening)),
        |(mut frames, seen, opening)| async move {
            if let Some(opening) = opening {
                let chunk = Bytes::from(opening);
                return Some((Ok::<_, Infallible>(chunk), (frames, seen, None)));
            }
            let frame = feed::next_frame(&mut frames, seen).await?;
            let chunk = Bytes::from(state_event(&frame));
            Some((Ok(chunk), (frames, frame.version, None)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream)
}

fn state_event(frame: &Frame) -> String {
    format!("event: state\nid: {}\ndata: {}\n\n", frame.seq, frame.state)
}

/// `GET /ring`, or `GET /ring?key=K`.
pub async fn ring(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad(format!("Invalid query: {e}")))?;
    let snap = state.snapshot.load();
    Ok(match query.get("key") {
        Some(key) => successful(json!(ring_view::lookup(&snap, key, Instant::now())?)),
        None => successful(json!(ring_view::ring_view(&snap))),
    })
}

/// `POST /loadtest`: `202` with the test's first report.
pub async fn start_loadtest(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = authorized_body(&state, &req, payload).await?;
    let plan = plan::parse(&body, |path| {
        ["GET", "POST", "PUT", "DELETE"]
            .iter()
            .any(|m| is_admin(m, path))
    })?;
    let report = state.loadtest.start(plan)?;
    Ok(HttpResponse::Accepted().json(json!({"message": *report, "status": "successful"})))
}

/// `GET /loadtest`: the test under way, or the last one, or `null`.
pub async fn loadtest(state: web::Data<AppState>) -> HttpResponse {
    successful(json!(state.loadtest.report().as_deref()))
}

/// `DELETE /loadtest`: stops the test under way.
pub async fn stop_loadtest(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    crate::api::authorize(&state, &req)?;
    Ok(successful(json!(*state.loadtest.stop()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_stays_small_and_names_no_other_host() {
        assert!(PAGE.len() < 150 * 1024, "{} bytes", PAGE.len());
        for (i, _) in PAGE.match_indices("://") {
            let url = &PAGE[PAGE[..i]
                .rfind(['"', '\'', '`', '(', ' '])
                .map_or(0, |j| j + 1)..];
            assert!(
                url.starts_with("http://www.w3.org/2000/svg"),
                "the page names another host: {}",
                &url[..url.len().min(60)]
            );
        }
    }
}
