//! Access control in front of every `/v1` and `/admin` route, in this order: who is calling
//! (an API key, a JWT, or nobody on an open gateway: 401 otherwise), whether the route is in
//! the caller's scopes (403), whether its key's budget is spent (429), and whether its rate
//! limits admit one more request (429, or 503 when the shared limiter is down and the policy
//! is to fail closed). Admitted requests carry the [`Principal`] to their handler, and their
//! responses the `x-ratelimit-*` headers; the concurrency slot is held until the body ends.

mod key_cache;
mod layer;
mod principal;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use passerelle_store::{AuditAction, KeyVerifier as _, NewAuditEvent, Scope, unix_now};
use tokio::sync::OwnedSemaphorePermit;

pub(crate) use key_cache::KeyCache;
pub(crate) use layer::{AuthLayer, AuthService};
pub use principal::{ANONYMOUS, Credential, Principal};

use crate::body::attach_to_body;
use crate::edge::RouteName;
use crate::error::ApiError;
use crate::jwt;
use crate::ratelimit::Admitted;
use crate::state::AppState;

/// Presented keys longer than this are rejected without hashing; generated keys are 52 bytes
/// and JWTs a few hundred.
const MAX_PRESENTED_LEN: usize = 8192;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouteAccess {
    /// The scope the caller needs; `None` for routes any authenticated caller may use.
    scope: Option<Scope>,
    /// Whether the request counts against rate limits and budgets.
    metered: bool,
}

/// The one table from routes to what they require.
fn route_access(route: &str) -> RouteAccess {
    let metered = |scope| RouteAccess {
        scope: Some(scope),
        metered: true,
    };
    let open = |scope| RouteAccess {
        scope,
        metered: false,
    };
    match route {
        "/v1/chat/completions" => metered(Scope::Chat),
        "/v1/completions" => metered(Scope::Completions),
        "/v1/embeddings" => metered(Scope::Embeddings),
        "/v1/moderations" => metered(Scope::Moderation),
        r if r.starts_with("/v1/documents") => metered(Scope::Documents),
        r if r.starts_with("/admin/") || r.starts_with("/v1/users/") => open(Some(Scope::Admin)),
        // Models, own usage, feedback: any caller.
        _ => open(None),
    }
}

/// A request the access checks let through, the caller in its extensions, and what its
/// response must hold.
pub(crate) struct Cleared {
    req: Request,
    hold: Hold,
}

/// What an admitted request holds until its response body ends: its rate-limit slot (and the
/// headers to report) when it is metered, and its concurrency permit.
pub(crate) struct Hold {
    admitted: Option<Admitted>,
    in_flight: OwnedSemaphorePermit,
}

impl Hold {
    /// `response` with the rate-limit headers set and the permits tied to its body.
    fn attach(self, mut response: Response) -> Response {
        match self.admitted {
            Some(admitted) => {
                admitted.headers.apply(response.headers_mut());
                attach_to_body(response, (admitted.permit, self.in_flight))
            }
            None => attach_to_body(response, self.in_flight),
        }
    }
}

/// The access checks (see the module docs), and after them the gateway's concurrency bound:
/// callers turned away here never hold a concurrency permit. `Err` is the refusal to answer.
async fn clear(
    state: AppState,
    route: Option<RouteName>,
    mut req: Request,
) -> Result<Cleared, Response> {
    let route = route.as_ref().map_or("", RouteName::as_str);
    let client = client_addr(&state, &req);
    let principal = match authenticate(&state, req.headers()).await {
        Ok(principal) => principal,
        Err(err) => return Err(err.into_response()),
    };
    if let Some(key_id) = principal.key_id() {
        tracing::Span::current().record("key_id", key_id);
    }
    let access = route_access(route);
    if let Some(scope) = access.scope
        && let Err(err) = principal.require(scope)
    {
        state.audit(blocked(
            &principal,
            route,
            &client,
            format!("missing scope {scope}"),
        ));
        return Err(err.into_response());
    }
    let mut admitted = None;
    if access.metered {
        if let Err(err) = check_budget(&state, &principal).await {
            if matches!(err, ApiError::BudgetExceeded { .. }) {
                state.audit(blocked(
                    &principal,
                    route,
                    &client,
                    "budget spent".to_owned(),
                ));
            }
            return Err(err.into_response());
        }
        match state
            .limiter()
            .admit(principal.tenant(), principal.limits())
            .await
        {
            Ok(ok) => admitted = Some(ok),
            Err(refused) => return Err(ApiError::RateLimited(refused).into_response()),
        }
    }
    let in_flight = match state.admission().try_admit() {
        Ok(permit) => permit,
        Err(busy) => return Err(busy.into_response()),
    };
    Caller::admit(&mut req, principal, client);
    Ok(Cleared {
        req,
        hold: Hold {
            admitted,
            in_flight,
        },
    })
}

fn blocked(principal: &Principal, route: &str, client: &ClientAddr, why: String) -> NewAuditEvent {
    NewAuditEvent::now(principal.id(), AuditAction::RequestBlocked)
        .target(route)
        .detail(why)
        .client_addr_if_known(client.text().as_deref())
}

/// The caller's address, for the audit log: the peer, or the first `X-Forwarded-For` hop when
/// the operator says a proxy (nginx) sets it. The access layer puts it in the request's
/// extensions; as an extractor it is unknown on routes outside that layer. A peer address is
/// only written out when an audit event names it, which few requests do.
#[derive(Debug, Clone, Default)]
pub struct ClientAddr(Option<ClientSource>);

#[derive(Debug, Clone)]
enum ClientSource {
    Peer(IpAddr),
    Forwarded(Arc<str>),
}

impl ClientAddr {
    /// The address as audit events record it, when known.
    pub fn text(&self) -> Option<String> {
        match self.0.as_ref()? {
            ClientSource::Peer(ip) => Some(ip.to_string()),
            ClientSource::Forwarded(hop) => Some(hop.to_string()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller::of(&parts.extensions)
            .and_then(|caller| caller.admitted.as_ref())
            .map(|(_, client)| client.clone())
            .unwrap_or_default())
    }
}

/// What the gateway knows of a request's caller, kept as one request extension that is filled
/// in as the request goes: the peer's address when the connection hands the request over, the
/// [`Principal`] and [`ClientAddr`] once the access layer admits it. One entry, because every
/// extension is an allocation per request, and a fourth one also regrows the map (axum adds
/// two of its own).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    peer: Option<SocketAddr>,
    admitted: Option<(Principal, ClientAddr)>,
}

impl Caller {
    /// A caller known only by its connection's peer address.
    pub(crate) fn peer(addr: SocketAddr) -> Self {
        Self {
            peer: Some(addr),
            admitted: None,
        }
    }

    pub(crate) fn of(extensions: &axum::http::Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    pub(crate) fn principal(&self) -> Option<&Principal> {
        self.admitted.as_ref().map(|(principal, _)| principal)
    }

    fn admit(req: &mut Request, principal: Principal, client: ClientAddr) {
        let extensions = req.extensions_mut();
        match extensions.get_mut::<Self>() {
            Some(caller) => caller.admitted = Some((principal, client)),
            None => {
                extensions.insert(Self {
                    peer: None,
                    admitted: Some((principal, client)),
                });
            }
        }
    }
}

fn client_addr(state: &AppState, req: &Request) -> ClientAddr {
    if state.config().trust_forwarded_for
        && let Some(forwarded) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    {
        return ClientAddr(Some(ClientSource::Forwarded(forwarded.into())));
    }
    ClientAddr(
        Caller::of(req.extensions())
            .and_then(|caller| caller.peer)
            .map(|addr| ClientSource::Peer(addr.ip())),
    )
}

/// Who is calling.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let defaults = state.config().rate_limits;
    if is_open(state).await? {
        return Ok(Principal::anonymous(defaults));
    }
    let presented = presented_key(headers).ok_or(ApiError::MissingApiKey)?;
    if presented.is_empty() || presented.len() > MAX_PRESENTED_LEN {
        return Err(ApiError::InvalidApiKey);
    }
    if let Some(verifier) = state.jwt()
        && jwt::looks_like_jwt(presented)
    {
        let claims = verifier
            .verify(presented)
            .map_err(|err| ApiError::InvalidToken {
                reason: err.to_string(),
            })?;
        let scopes = claims.scopes.map(|names| {
            names
                .iter()
                .filter_map(|name| name.parse::<Scope>().ok())
                .collect::<BTreeSet<_>>()
        });
        return Ok(Principal::from_jwt(claims.subject, scopes, defaults));
    }
    if let Some(principal) = state.static_principal(presented) {
        return Ok(principal);
    }
    let record = verify_key(state, presented).await?;
    Ok(Principal::from_key(record, defaults))
}

/// No key, no JWT configured, and the operator did not require auth: anyone may call.
async fn is_open(state: &AppState) -> Result<bool, ApiError> {
    if state.config().require_auth
        || state.jwt().is_some()
        || !state.keys().static_keys().is_empty()
    {
        return Ok(false);
    }
    match state.keys().has_any_keys().await {
        Ok(any) => Ok(!any),
        // Unknown: closed is the safe answer.
        Err(err) if err.is_unavailable() => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// A stored key's record (static keys are looked up before).
async fn verify_key(
    state: &AppState,
    presented: &str,
) -> Result<passerelle_store::KeyRecord, ApiError> {
    // The store is always asked, so a revocation takes effect at once; the cache only answers
    // while the store cannot.
    let cache = state.key_cache();
    let verified = match state.keys().store() {
        Some(store) => store.verify(presented).await,
        None => Ok(None),
    };
    match verified {
        Ok(Some(record)) => {
            cache.insert(presented, &record);
            Ok(record)
        }
        Ok(None) => {
            cache.remove(presented);
            Err(ApiError::InvalidApiKey)
        }
        Err(err) if err.is_unavailable() => match cache.get(presented) {
            Some(record) => {
                tracing::warn!(error = %err, "key store unreachable; accepting a recently verified key");
                Ok(record)
            }
            None => Err(err.into()),
        },
        Err(err) => Err(err.into()),
    }
}

/// 429 once the key's budget for the current period is spent. While the store cannot say, the
/// rate limiter's failure policy decides, so one switch governs both.
async fn check_budget(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let (Some(budget), Some(key_id)) = (principal.budget(), principal.key_id()) else {
        return Ok(());
    };
    let now = unix_now();
    let since = budget.period.period_start(now);
    match state.store().spent_micro_usd(key_id, since).await {
        Ok(spent) if spent >= budget.limit_micro_usd => Err(ApiError::BudgetExceeded {
            budget,
            resets_at: budget.period.next_start(now),
        }),
        Ok(_) => Ok(()),
        Err(err) if err.is_unavailable() => match state.limiter().failure_policy() {
            crate::ratelimit::FailurePolicy::Open => Ok(()),
            crate::ratelimit::FailurePolicy::Closed => Err(err.into()),
        },
        Err(err) => Err(err.into()),
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

    #[test]
    fn every_route_has_the_intended_access() {
        let access = |route| route_access(route);
        assert_eq!(access("/v1/chat/completions").scope, Some(Scope::Chat));
        assert!(access("/v1/chat/completions").metered);
        assert_eq!(access("/v1/completions").scope, Some(Scope::Completions));
        assert_eq!(access("/v1/embeddings").scope, Some(Scope::Embeddings));
        assert_eq!(access("/v1/documents/{id}").scope, Some(Scope::Documents));
        assert_eq!(access("/admin/keys").scope, Some(Scope::Admin));
        assert!(!access("/admin/keys").metered);
        assert_eq!(access("/admin/keys/{id}").scope, Some(Scope::Admin));
        assert_eq!(access("/admin/audit").scope, Some(Scope::Admin));
        assert_eq!(access("/v1/users/{id}/data").scope, Some(Scope::Admin));
        assert_eq!(access("/v1/models").scope, None);
        assert_eq!(access("/v1/usage").scope, None);
    }
}
