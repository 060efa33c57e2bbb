//! Every error a client can see, and the one place it becomes an HTTP response.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::dataplane::http1::HeadError;

/// An error answered to a client, always as `{"message": "<Error> …", "status": "failure"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something impossible; nothing changed.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the current replica set (a name in use).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the admin endpoints accept.
    #[error("Request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A request head larger than `--max-header-bytes`.
    #[error("{0}")]
    HeaderTooLarge(String),
    /// The request asks for something HTTP allows but we do not do (a transfer coding
    /// other than chunked, `CONNECT`).
    #[error("{0}")]
    NotImplemented(String),
    /// A mutating endpoint was called without the admin token.
    #[error("Missing or wrong admin token")]
    Unauthorized,
    /// A mutating endpoint was called on the public address while it is served on
    /// `--admin-listen`.
    #[error("{0}")]
    Forbidden(String),
    /// A replica could not be started; the request was rolled back.
    #[error("{0}")]
    StartFailed(String),
    /// No replica has this name.
    #[error("Unknown replica '{0}'")]
    UnknownReplica(String),
    /// Something else named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The replica answered 404 for a forwarded path.
    #[error("'{0}' endpoint does not exist in server replicas")]
    UnknownEndpoint(String),
    /// No replica could be reached for a forwarded request.
    #[error("No replica could serve the request: {0}")]
    BadGateway(String),
    /// No replica answered in time.
    #[error("The replica did not answer in time")]
    GatewayTimeout,
    /// There is no replica to forward to, or the balancer is shutting down.
    #[error("{0}")]
    Unavailable(String),
}

impl From<HeadError> for ApiError {
    fn from(e: HeadError) -> Self {
        let text = e.to_string();
        match e {
            HeadError::TooLarge => ApiError::HeaderTooLarge(text),
            HeadError::Unsupported(_) => ApiError::NotImplemented(text),
            HeadError::Malformed(_) => ApiError::BadRequest(text),
        }
    }
}

impl ApiError {
    /// A `BadRequest` from anything printable.
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status_code().as_u16()
    }

    /// The status line's reason phrase.
    pub fn reason(&self) -> &'static str {
        self.status_code().canonical_reason().unwrap_or("Error")
    }

    /// The JSON body every error is answered with.
    pub fn body(&self) -> String {
        json!({"message": format!("<Error> {self}"), "status": "failure"}).to_string()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::UnknownEndpoint(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnknownReplica(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::StartFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        res.content_type("application/json").body(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_head_gets_the_status_and_reason_phrase_that_say_why() {
        let cases = [
            (HeadError::TooLarge, 431, "Request Header Fields Too Large"),
            (HeadError::Unsupported("CONNECT"), 501, "Not Implemented"),
            (HeadError::Malformed("no Host"), 400, "Bad Request"),
        ];
        for (head, status, reason) in cases {
            let text = head.to_string();
            let e = ApiError::from(head);
            assert_eq!((e.status(), e.reason()), (status, reason));
            assert!(e.body().contains(&text), "{}", e.body());
        }
    }
}
