//! API key authentication as an extractor: a handler that takes a [`Principal`] only runs for
//! callers with a valid key (or when the gateway runs open, with no keys configured).

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};
use passerelle_store::KeyRecord;

use crate::error::ApiError;
use crate::state::AppState;

/// Presented keys longer than this are rejected without hashing; generated keys are 52 bytes.
const MAX_PRESENTED_KEY_LEN: usize = 512;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A caller with a valid, unrevoked key (boxed: the record is large beside `Anonymous`).
    Key(Box<KeyRecord>),
    /// Any caller, because no key is configured and auth is not required.
    Anonymous,
}

impl Principal {
    /// The key id, for logs and (later) usage accounting.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Principal::Key(record) => Some(&record.id),
            Principal::Anonymous => None,
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let keys = state.keys();
        if !state.config().require_auth && !keys.has_any_keys().await? {
            return Ok(Principal::Anonymous);
        }
        let presented = presented_key(&parts.headers).ok_or(ApiError::MissingApiKey)?;
        if presented.len() > MAX_PRESENTED_KEY_LEN {
            return Err(ApiError::InvalidApiKey);
        }
        let record = keys
            .verify(presented)
            .await?
            .ok_or(ApiError::InvalidApiKey)?;
        // The request span declares `key_id`; the id identifies the key, never its secret.
        tracing::Span::current().record("key_id", record.id.as_str());
        Ok(Principal::Key(Box::new(record)))
    }
}

/// The key from `Authorization: Bearer <key>`, else from `X-API-Key: <key>`. A header that is
/// present but unusable (not UTF-8, another scheme, empty) counts as a wrong key, not a
/// missing one, so the client learns its header was seen.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or("").trim();
        let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
        return Some(if scheme.eq_ignore_ascii_case("bearer") {
            key.trim()
        } else {
            ""
        });
    }
    headers
        .get("x-api-key")
        .map(|value| value.to_str().unwrap_or("").trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn bearer_and_x_api_key_are_read() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer psk-1")])),
            Some("psk-1")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  psk-1 ")])),
            Some("psk-1")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "psk-2")])),
            Some("psk-2")
        );
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn unusable_authorization_is_a_wrong_key_not_a_missing_one() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic dXNlcg==")])),
            Some("")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer")])),
            Some("")
        );
    }
}
