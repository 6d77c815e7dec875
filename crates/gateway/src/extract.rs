//! Request extractors whose failures come out in our error envelope.

use std::convert::Infallible;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header, request::Parts};
use bytes::Bytes;
use http_body_util::{LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::body::read_all;
use crate::error::ApiError;
use crate::state::AppState;

/// The request id header, read from clients and echoed back (the edge layer sets it when
/// absent). A `HeaderName` rather than a `&str`, which every lookup would parse again.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// `Json` whose rejections are [`ApiError`]s: a wrong content type, malformed JSON and wrong
/// field types are 400s naming the field at fault, and a body over the limit is a 413.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let RawJson(bytes) = RawJson::from_request(req, state).await?;
        parse_json(&bytes).map(AppJson)
    }
}

/// A JSON body not parsed yet, with [`AppJson`]'s checks of content type and size: for handlers
/// that decide how to parse it (or relay it) from its contents.
#[derive(Debug)]
pub struct RawJson(pub Bytes);

impl FromRequest<AppState> for RawJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::invalid_request(
                "Expected a JSON body with `Content-Type: application/json`.",
            ));
        }
        // The limit is read from the config rather than set by a layer for axum's extractors:
        // every body the gateway takes comes through here, and each layer's request extension
        // costs an allocation per request.
        let limit = state.config().body_limit_bytes;
        match read_all(Limited::new(req.into_body(), limit)).await {
            Ok(body) => Ok(RawJson(body)),
            Err(err) if err.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge { limit }),
            Err(err) => Err(ApiError::invalid_request(format!(
                "Could not read the request body: {err}"
            ))),
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // Compared without lowercasing into a new string: this runs for every request with a body.
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let starts_with = |prefix: &str| {
        essence
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    let ends_with = |suffix: &str| {
        essence
            .len()
            .checked_sub(suffix.len())
            .and_then(|at| essence.get(at..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
    };
    essence.eq_ignore_ascii_case("application/json")
        || (starts_with("application/") && ends_with("+json"))
}

/// Parses a body, naming the field at fault in the error (`messages[0].content`).
///
/// A body that parses is read once by plain serde; only a failing one is read again to find
/// the path to its fault, since tracking the path costs every field of every good body.
pub(crate) fn parse_json<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    parse_json_traced(bytes)
}

/// [`parse_json`]'s slow path: the same parse, tracking the path for the error.
fn parse_json_traced<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid_request(format!(
                "We could not parse the JSON body of your request: {inner}."
            ));
        }
        let message = inner.to_string();
        let param = param_of(&path, &message);
        ApiError::InvalidRequest {
            message: match &param {
                Some(param) => format!("Invalid value for `{param}`: {}", strip_position(&message)),
                None => format!("Invalid request body: {}", strip_position(&message)),
            },
            param,
        }
    })?;
    deserializer.end().map_err(|err| {
        ApiError::invalid_request(format!(
            "We could not parse the JSON body of your request: {err}."
        ))
    })?;
    Ok(value)
}

/// The field an error is about: the path serde reached, completed by the field name of a
/// "missing field" error (which serde reports at the enclosing object).
fn param_of(path: &str, message: &str) -> Option<String> {
    let path = if path == "." { "" } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        ("", None) => None,
        ("", Some(field)) => Some(field.to_owned()),
        (path, Some(field)) => Some(format!("{path}.{field}")),
        (path, None) => Some(path.to_owned()),
    }
}

/// serde_json appends " at line L column C", which says nothing once the param is named.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    }
}

/// The request's id, as set or propagated by the edge layer. Its bytes are shared, not copied,
/// with the request's header, the upstream request's and the response's.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // The edge layer only lets printable ASCII through.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as the header that carries it.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let id = match parts.headers.get(&REQUEST_ID_HEADER) {
            Some(id) if id.to_str().is_ok() => id.clone(),
            // Only when the edge layer is not installed (unit tests of handlers).
            _ => new_request_id(),
        };
        Ok(RequestId(id))
    }
}

/// A fresh request id: a UUID, in one allocation that every copy of the header shares.
pub(crate) fn new_request_id() -> HeaderValue {
    let mut id = [0; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
    // A UUID is always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        model: String,
        temperature: Option<f64>,
        messages: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        role: String,
        content: String,
    }

    fn error_of(body: &str) -> (String, Option<String>) {
        match parse_json::<Outer>(body.as_bytes()).unwrap_err() {
            ApiError::InvalidRequest { message, param } => (message, param),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_named_as_such() {
        let (message, param) = error_of("{\"model\": ");
        assert!(message.contains("could not parse the JSON"), "{message}");
        assert_eq!(param, None);
        let (message, _) = error_of("{\"model\":\"m\",\"messages\":[]} trailing");
        assert!(message.contains("could not parse the JSON"), "{message}");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let (message, param) = error_of(r#"{"model":"m","temperature":"hot","messages":[]}"#);
        assert_eq!(param.as_deref(), Some("temperature"));
        assert!(message.contains("invalid type"), "{message}");
        assert!(!message.contains("line"), "{message}");
        let (_, param) = error_of(r#"{"model":"m","messages":[{"role":"user","content":3}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn missing_fields_are_named() {
        let (_, param) = error_of(r#"{"messages":[]}"#);
        assert_eq!(param.as_deref(), Some("model"));
        let (_, param) = error_of(r#"{"model":"m","messages":[{"role":"user"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/vnd.api+json"));
        assert!(with(" APPLICATION/VND.API+JSON ;x=y"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonl"));
        assert!(!with("text/x+json"));
        assert!(!with("+json"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
