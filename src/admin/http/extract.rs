//! Extractors that reject with a problem instead of axum's plain-text answers.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::de::DeserializeOwned;

use super::problem::{Kind, Problem};

/// A JSON body (`application/json`), or a problem.
pub(super) struct Body<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| Body(v)).map_err(Problem::from)
    }
}

/// A JSON body that may be left out: an empty body is `T::default()`.
pub(super) struct OptionalBody<T>(pub(super) T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|r| Problem::from_bytes_rejection(&r))?;
        if bytes.is_empty() {
            return Ok(OptionalBody(T::default()));
        }
        if !json {
            return Err(Problem::new(
                Kind::UnsupportedMediaType,
                "a request body must be sent with `Content-Type: application/json`",
            ));
        }
        Json::<T>::from_bytes(&bytes).map(|Json(v)| OptionalBody(v)).map_err(Problem::from)
    }
}

/// `application/json`, or any `application/…+json`, with or without parameters.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query parameters, or a problem.
pub(super) struct Params<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(v)| Params(v)).map_err(Problem::from)
    }
}

/// The `{id}` of a route, or a problem (the lifecycle validates it as a tenant id).
pub(super) struct TenantPath(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| TenantPath(v))
            .map_err(Problem::from)
    }
}
