//! Extractors whose rejections are JSON errors (axum's defaults answer plain text).
//!
//! Request bodies are collected into a zeroizing buffer (a plaintext `value` may be inside),
//! limited to [`MAX_BODY_BYTES`], and parsed leniently as to `Content-Type`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::api::MAX_BODY_BYTES;
use crate::vault::error::ApiError;

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

/// A request body must arrive in full within this time (a client trickling its body is cut).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Up to this much of an oversized body is read and discarded before answering 413, so the
/// client (still sending) gets the answer instead of a connection reset.
const DRAIN_LIMIT: usize = 4 * MAX_BODY_BYTES;

async fn drain(mut body: axum::body::Body, mut seen: usize) {
    let work = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), work).await;
}

/// Reads the whole body (≤ [`MAX_BODY_BYTES`], within [`BODY_READ_TIMEOUT`]) into a buffer
/// that is zeroized when dropped.
async fn read_body(req: Request) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    tokio::time::timeout(BODY_READ_TIMEOUT, read_body_untimed(req))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
        })?
}

async fn read_body_untimed(req: Request) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        if declared.is_some_and(|n| n <= DRAIN_LIMIT as u64) {
            drain(req.into_body(), 0).await;
        }
        return Err(too_large());
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(
        declared.unwrap_or(0).min(MAX_BODY_BYTES as u64) as usize,
    ));
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::bad_request("body_unreadable", "the request body could not be read")
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_BODY_BYTES {
            drain(body, buf.len() + data.len()).await;
            return Err(too_large());
        }
        if buf.capacity() - buf.len() < data.len() {
            // Grow by hand so no unzeroized copy is left behind by a reallocation.
            let want = (buf.len() + data.len())
                .max(buf.capacity() * 2)
                .min(MAX_BODY_BYTES);
            let mut bigger = Zeroizing::new(Vec::with_capacity(want));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

/// Maps a JSON parse error to a message that never echoes the offending value.
fn json_error(e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON ({at})"))
        }
        Category::Data => {
            let msg = e.to_string();
            let safe = ["unknown field", "missing field", "duplicate field"]
                .iter()
                .any(|p| msg.starts_with(p));
            if safe {
                // "unknown field `x`, expected one of …": names only, no values.
                let text = msg.split(" at line").next().unwrap_or(&msg);
                let code = if msg.starts_with("unknown field") {
                    "unknown_field"
                } else {
                    "invalid_body"
                };
                ApiError::bad_request(code, text.to_string())
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("a field has the wrong type or value ({at})"),
                )
            }
        }
    }
}

/// A JSON body, required.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let buf = read_body(req).await?;
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "invalid_json",
                "the request needs a JSON body",
            ));
        }
        serde_json::from_slice(&buf)
            .map(JsonBody)
            .map_err(|e| json_error(&e))
    }
}

/// A JSON body that may be absent (empty).
pub struct OptJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let buf = read_body(req).await?;
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptJsonBody(None));
        }
        serde_json::from_slice(&buf)
            .map(|v| OptJsonBody(Some(v)))
            .map_err(|e| json_error(&e))
    }
}

/// Query string with JSON rejections.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Path parameters with JSON rejections.
pub struct P<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| P(v))
            .map_err(|e: PathRejection| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u64,
    }

    #[test]
    fn json_errors_never_echo_values() {
        let e = serde_json::from_str::<T>(r#"{"a":"canary-value"}"#).unwrap_err();
        let api = json_error(&e);
        assert_eq!(api.code, "invalid_body");
        assert!(!api.message.contains("canary"), "{}", api.message);
        let e = serde_json::from_str::<T>(r#"{"a":1,"zz":2}"#).unwrap_err();
        let api = json_error(&e);
        assert_eq!(api.code, "unknown_field");
        assert!(api.message.contains("zz"));
        let e = serde_json::from_str::<T>("{nope").unwrap_err();
        assert_eq!(json_error(&e).code, "invalid_json");
    }
}
