//! Who is calling, and what they may do.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use passerelle_store::{Budget, KeyRecord, SafetyChecks, Scope};

use crate::error::ApiError;
use crate::ratelimit::Limits;

/// An authenticated caller. Built by the access layer in front of every `/v1` and `/admin`
/// route and handed to handlers as an extractor.
#[derive(Debug, Clone)]
pub struct Principal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    credential: Credential,
    scopes: BTreeSet<Scope>,
    limits: Limits,
    /// See [`Principal::tenant`]; built once, since the rate limiter asks for it per request.
    tenant: String,
}

/// How the caller proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An unrevoked, unexpired API key.
    // Boxed: a key record is several times the size of the other variants.
    ApiKey(Box<KeyRecord>),
    /// A verified JWT.
    Jwt { subject: String },
    /// Nobody: the gateway runs open because no key is configured.
    Anonymous,
}

/// The principal id of open gateways' callers.
pub const ANONYMOUS: &str = "anonymous";

impl Principal {
    /// A key holder: the key's own scopes, and its limits where set, else `defaults`.
    pub fn from_key(record: KeyRecord, defaults: Limits) -> Self {
        let limits = Limits {
            rpm: record.limits.rpm.or(defaults.rpm),
            tpm: record.limits.tpm.or(defaults.tpm),
            max_concurrent: record.limits.max_concurrent.or(defaults.max_concurrent),
        };
        let scopes = record.scopes.clone();
        Self::new(Credential::ApiKey(Box::new(record)), scopes, limits)
    }

    /// A JWT subject: the scopes its token carries, else every user scope.
    pub fn from_jwt(subject: String, scopes: Option<BTreeSet<Scope>>, limits: Limits) -> Self {
        let scopes = scopes.unwrap_or_else(Scope::all_user);
        Self::new(Credential::Jwt { subject }, scopes, limits)
    }

    /// A caller of an open gateway: every user scope, never admin.
    pub fn anonymous(limits: Limits) -> Self {
        Self::new(Credential::Anonymous, Scope::all_user(), limits)
    }

    fn new(credential: Credential, scopes: BTreeSet<Scope>, limits: Limits) -> Self {
        let tenant = match &credential {
            Credential::ApiKey(record) => format!("key:{}", record.id),
            Credential::Jwt { subject } => format!("jwt:{subject}"),
            Credential::Anonymous => ANONYMOUS.to_owned(),
        };
        Self {
            inner: Arc::new(Inner {
                credential,
                scopes,
                limits,
                tenant,
            }),
        }
    }

    /// The principal id usage, feedback and audit records are kept under: a key's owner, a
    /// JWT's subject, or `anonymous`.
    pub fn id(&self) -> &str {
        match &self.inner.credential {
            Credential::ApiKey(record) => &record.owner,
            Credential::Jwt { subject } => subject,
            Credential::Anonymous => ANONYMOUS,
        }
    }

    /// The key id, when the caller used a key.
    pub fn key_id(&self) -> Option<&str> {
        match &self.inner.credential {
            Credential::ApiKey(record) => Some(&record.id),
            _ => None,
        }
    }

    /// Whose private data (cached answers, documents) the caller sees and whose rate limits a
    /// request counts against: one key's, one JWT subject's, or the open gateway's single
    /// anonymous tenant.
    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    /// How the caller authenticated.
    pub fn credential(&self) -> &Credential {
        &self.inner.credential
    }

    /// The caller's rate limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The key's budget, if it has one.
    pub fn budget(&self) -> Option<Budget> {
        match &self.inner.credential {
            Credential::ApiKey(record) => record.limits.budget,
            _ => None,
        }
    }

    /// What the safety filter checks for this caller, when its key says; else the gateway's
    /// setting applies.
    pub fn safety_checks(&self) -> Option<SafetyChecks> {
        match &self.inner.credential {
            Credential::ApiKey(record) => record.safety,
            _ => None,
        }
    }

    /// Whether the caller holds `scope`.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.inner.scopes.contains(&scope)
    }

    /// The caller's scopes.
    pub fn scopes(&self) -> &BTreeSet<Scope> {
        &self.inner.scopes
    }

    /// 403 unless the caller holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::ScopeForbidden { scope })
        }
    }

    /// 403 when the caller's key is limited to other models.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        match &self.inner.credential {
            Credential::ApiKey(record) if !record.allows_model(model) => {
                Err(ApiError::ModelForbidden {
                    model: model.to_owned(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // The access layer runs before every route that takes a Principal; a route without it
        // is a wiring mistake, not the client's.
        super::Caller::of(&parts.extensions)
            .and_then(super::Caller::principal)
            .cloned()
            .ok_or_else(|| ApiError::Internal {
                detail: "route reached without the access layer".to_owned(),
            })
    }
}
