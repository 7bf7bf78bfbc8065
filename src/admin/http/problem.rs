//! RFC 9457 problems: the kinds the API reports, and how lifecycle errors and axum's own
//! rejections become one.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::lifecycle::LifecycleError;

use super::PROBLEM_TYPE_PREFIX;

/// The kinds of problem the API reports; each has one `type`, title and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidRequest,
    NotFound,
    Conflict,
    OperationFailed,
    UpstreamUnavailable,
    CatalogUnavailable,
    NotReady,
    Unauthorized,
    NoSuchRoute,
    MethodNotAllowed,
    MalformedJson,
    InvalidBody,
    UnsupportedMediaType,
    PayloadTooLarge,
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::InvalidRequest | Kind::MalformedJson | Kind::InvalidBody => StatusCode::BAD_REQUEST,
            Kind::NotFound | Kind::NoSuchRoute => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::OperationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Kind::CatalogUnavailable | Kind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The last part of the problem `type`.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::InvalidRequest => "invalid-request",
            Kind::NotFound => "not-found",
            Kind::Conflict => "conflict",
            Kind::OperationFailed => "operation-failed",
            Kind::UpstreamUnavailable => "upstream-unavailable",
            Kind::CatalogUnavailable => "catalog-unavailable",
            Kind::NotReady => "not-ready",
            Kind::Unauthorized => "unauthorized",
            Kind::NoSuchRoute => "no-such-route",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::MalformedJson => "malformed-json",
            Kind::InvalidBody => "invalid-body",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::PayloadTooLarge => "payload-too-large",
            Kind::Internal => "internal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::InvalidRequest => "The request is invalid",
            Kind::NotFound => "No such tenant",
            Kind::Conflict => "The tenant's state does not allow this now",
            Kind::OperationFailed => "The operation failed on the upstream",
            Kind::UpstreamUnavailable => "The upstream server is unreachable",
            Kind::CatalogUnavailable => "The control database is unavailable",
            Kind::NotReady => "Not ready",
            Kind::Unauthorized => "A valid bearer token is required",
            Kind::NoSuchRoute => "No such route",
            Kind::MethodNotAllowed => "Method not allowed on this route",
            Kind::MalformedJson => "The body is not valid JSON",
            Kind::InvalidBody => "The body does not match the expected schema",
            Kind::UnsupportedMediaType => "The body must be application/json",
            Kind::PayloadTooLarge => "The body is too large",
            Kind::Internal => "Internal error",
        }
    }

    pub fn type_uri(self) -> String {
        format!("{PROBLEM_TYPE_PREFIX}{}", self.slug())
    }
}

/// An RFC 9457 problem details response.
#[derive(Debug)]
pub struct Problem {
    kind: Kind,
    detail: String,
    /// Extension members (RFC 9457 section 3.2).
    extensions: serde_json::Map<String, Value>,
    /// 401: the `WWW-Authenticate` challenge (RFC 6750 section 3).
    challenge: Option<&'static str>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Problem {
        Problem { kind, detail: detail.into(), extensions: serde_json::Map::new(), challenge: None }
    }

    pub(super) fn unauthorized(detail: &str, token_sent: bool) -> Problem {
        Problem {
            challenge: Some(if token_sent {
                "Bearer realm=\"pgtenant\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"pgtenant\""
            }),
            ..Problem::new(Kind::Unauthorized, detail)
        }
    }

    pub(super) fn with(mut self, name: &str, value: Value) -> Problem {
        self.extensions.insert(name.to_owned(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let mut body = self.extensions;
        body.insert("type".into(), Value::String(self.kind.type_uri()));
        body.insert("title".into(), Value::String(self.kind.title().into()));
        body.insert("status".into(), Value::from(status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail));
        let mut response = (status, Value::Object(body).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

impl From<LifecycleError> for Problem {
    fn from(e: LifecycleError) -> Problem {
        let kind = match &e {
            LifecycleError::Invalid(_) => Kind::InvalidRequest,
            LifecycleError::NotFound(_) => Kind::NotFound,
            LifecycleError::Conflict(_) => Kind::Conflict,
            LifecycleError::Failed(_) => Kind::OperationFailed,
            LifecycleError::Upstream(_) => Kind::UpstreamUnavailable,
            LifecycleError::Catalog(_) => Kind::CatalogUnavailable,
        };
        // LifecycleError's text is written to be shown to the operator (no secrets).
        Problem::new(kind, e.to_string())
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Problem {
        let kind = match &r {
            JsonRejection::JsonDataError(_) => Kind::InvalidBody,
            JsonRejection::JsonSyntaxError(_) => Kind::MalformedJson,
            JsonRejection::MissingJsonContentType(_) => Kind::UnsupportedMediaType,
            JsonRejection::BytesRejection(b) => return Problem::from_bytes_rejection(b),
            // The enum is non_exhaustive: judge a future variant by its status.
            _ if r.status().is_server_error() => Kind::Internal,
            _ => Kind::InvalidBody,
        };
        Problem::new(kind, r.body_text())
    }
}

impl Problem {
    pub(super) fn from_bytes_rejection(r: &BytesRejection) -> Problem {
        let kind = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Kind::PayloadTooLarge,
            s if s.is_server_error() => Kind::Internal,
            _ => Kind::InvalidRequest,
        };
        Problem::new(kind, r.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Problem {
        Problem::new(Kind::InvalidRequest, r.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Problem {
        let kind = if r.status().is_server_error() { Kind::Internal } else { Kind::InvalidRequest };
        Problem::new(kind, r.body_text())
    }
}
