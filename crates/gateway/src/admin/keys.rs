//! `/admin/keys` shapes: the creation request, checked field by field so a 400 names its
//! `param`, and the key as the API shows it, which never holds the secret or its hash.

use std::collections::BTreeSet;

use passerelle_store::keys::validate_label;
use passerelle_store::{Budget, BudgetPeriod, KeyLimits, KeyRecord, NewKey, SafetyChecks, Scope};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Largest budget accepted, in US dollars: far above any real cap, and small enough that its
/// micro-dollars convert exactly from a JSON number.
const MAX_BUDGET_USD: f64 = 1e9;

/// `POST /admin/keys`. Unknown fields are refused, so a misspelt limit is a 400 rather than a
/// key created without it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Human label.
    pub name: String,
    /// The principal the key acts for; defaults to the name.
    #[serde(default)]
    pub owner: Option<String>,
    /// Scope names (`chat`, `admin`, ...); defaults to every scope but `admin`.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Model allowlist; absent allows every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Expiry, seconds from now.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Spending cap.
    #[serde(default)]
    pub budget: Option<BudgetRequest>,
    /// What the safety filter checks for this key: `both`, `input`, `output` or `none`;
    /// absent: the gateway's setting.
    #[serde(default)]
    pub safety: Option<String>,
}

/// A budget as the API takes it: dollars and a period name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    /// US dollars, rounded to the micro-dollar.
    pub usd: f64,
    /// `daily`, `monthly` or `total`.
    pub period: String,
}

impl CreateKeyRequest {
    /// The key to create, with expiry relative to `now` (seconds since the epoch); a 400
    /// naming the field at fault otherwise.
    pub fn into_new_key(self, now: u64) -> Result<NewKey, ApiError> {
        let name = label("name", &self.name)?;
        let owner = match &self.owner {
            Some(owner) => label("owner", owner)?,
            None => name.clone(),
        };
        let mut new = NewKey::new(name, owner);
        if let Some(scopes) = self.scopes {
            new.scopes = parse_scopes(&scopes)?;
        }
        if let Some(models) = self.models {
            new.models = Some(parse_models(&models)?);
        }
        new.expires_at = match (self.expires_at, self.expires_in_secs) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_param(
                    "expires_in_secs",
                    "Give `expires_at` or `expires_in_secs`, not both.",
                ));
            }
            (Some(at), None) => Some(at),
            (None, Some(0)) => {
                return Err(ApiError::invalid_param(
                    "expires_in_secs",
                    "`expires_in_secs` must be at least 1.",
                ));
            }
            (None, Some(ttl)) => Some(now.saturating_add(ttl)),
            (None, None) => None,
        };
        new.limits = KeyLimits {
            rpm: positive("rpm", self.rpm)?,
            tpm: positive("tpm", self.tpm)?,
            max_concurrent: positive("max_concurrent", self.max_concurrent)?,
            budget: self.budget.map(BudgetRequest::into_budget).transpose()?,
        };
        new.safety = self
            .safety
            .map(|checks| {
                checks.parse().map_err(|_| {
                    ApiError::invalid_param(
                        "safety",
                        "`safety` must be both, input, output or none.",
                    )
                })
            })
            .transpose()?;
        Ok(new)
    }
}

impl BudgetRequest {
    fn into_budget(self) -> Result<Budget, ApiError> {
        if !self.usd.is_finite() || self.usd < 0.0 {
            return Err(ApiError::invalid_param(
                "budget.usd",
                "`budget.usd` must be a non-negative amount of US dollars.",
            ));
        }
        if self.usd > MAX_BUDGET_USD {
            return Err(ApiError::invalid_param(
                "budget.usd",
                format!("`budget.usd` must be at most {MAX_BUDGET_USD:.0}."),
            ));
        }
        let period = self
            .period
            .parse::<BudgetPeriod>()
            .map_err(|err| ApiError::invalid_param("budget.period", err.to_string()))?;
        // In range by the check above, so the cast neither saturates nor loses precision.
        let limit_micro_usd = (self.usd * 1e6).round() as u64;
        Ok(Budget {
            limit_micro_usd,
            period,
        })
    }
}

fn label(field: &str, value: &str) -> Result<String, ApiError> {
    validate_label(field, value)
        .map(str::to_owned)
        .map_err(|err| ApiError::invalid_param(field, err.to_string()))
}

fn parse_scopes(names: &[String]) -> Result<BTreeSet<Scope>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid_param(
            "scopes",
            "`scopes` must name at least one scope (leave it out for every scope but admin).",
        ));
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            name.parse::<Scope>()
                .map_err(|err| ApiError::invalid_param(format!("scopes[{i}]"), err.to_string()))
        })
        .collect()
}

fn parse_models(models: &[String]) -> Result<BTreeSet<String>, ApiError> {
    if models.is_empty() {
        return Err(ApiError::invalid_param(
            "models",
            "`models` must name at least one model (leave it out to allow every model).",
        ));
    }
    models
        .iter()
        .enumerate()
        .map(|(i, model)| label(&format!("models[{i}]"), model))
        .collect()
}

/// Zero would refuse every request, which is what revoking is for.
fn positive(field: &str, value: Option<u32>) -> Result<Option<u32>, ApiError> {
    if value == Some(0) {
        return Err(ApiError::invalid_param(
            field,
            format!("`{field}` must be at least 1 (leave it out for no limit)."),
        ));
    }
    Ok(value)
}

/// Whether a key verifies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

/// A key as the admin API shows it. Built from a [`KeyRecord`], which holds neither the
/// secret nor its hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeyOut {
    /// Always `api_key`.
    pub object: &'static str,
    pub id: String,
    pub name: String,
    pub owner: String,
    /// `psk-` and 8 characters of the secret, to tell keys apart.
    pub prefix: String,
    pub status: KeyStatus,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub scopes: Vec<Scope>,
    /// `null` allows every model.
    pub models: Option<Vec<String>>,
    pub limits: LimitsOut,
    /// What the safety filter checks; `null`: the gateway's setting.
    pub safety: Option<SafetyChecks>,
}

/// A key's limits; `null` means none of that kind.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsOut {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub budget: Option<BudgetOut>,
}

/// A budget in the request's form, with the exact micro-dollar amount beside it.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetOut {
    pub usd: f64,
    pub limit_micro_usd: u64,
    pub period: BudgetPeriod,
}

impl KeyOut {
    /// The view of `record` at `now` (seconds since the epoch).
    pub fn new(record: KeyRecord, now: u64) -> Self {
        let status = if record.is_revoked() {
            KeyStatus::Revoked
        } else if record.is_expired(now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        };
        let limits = LimitsOut {
            rpm: record.limits.rpm,
            tpm: record.limits.tpm,
            max_concurrent: record.limits.max_concurrent,
            budget: record.limits.budget.map(|budget| BudgetOut {
                usd: budget.limit_micro_usd as f64 / 1e6,
                limit_micro_usd: budget.limit_micro_usd,
                period: budget.period,
            }),
        };
        Self {
            object: "api_key",
            id: record.id,
            name: record.name,
            owner: record.owner,
            prefix: record.prefix,
            status,
            created_at: record.created_at,
            revoked_at: record.revoked_at,
            expires_at: record.expires_at,
            scopes: record.scopes.into_iter().collect(),
            models: record.models.map(|models| models.into_iter().collect()),
            limits,
            safety: record.safety,
        }
    }
}

/// `POST /admin/keys`'s answer: the key, and its secret in `key`, shown this once.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub record: KeyOut,
    /// The plaintext secret. The store keeps only its hash: it cannot be shown again.
    pub key: String,
}

/// `GET /admin/keys`.
#[derive(Debug, Serialize)]
pub struct KeyList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<KeyOut>,
}

impl KeyList {
    pub fn new(data: Vec<KeyOut>) -> Self {
        Self {
            object: "list",
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    fn request(json: serde_json::Value) -> Result<NewKey, ApiError> {
        parse_json::<CreateKeyRequest>(json.to_string().as_bytes())?.into_new_key(1_000)
    }

    fn param_of(json: serde_json::Value) -> Option<String> {
        match request(json) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_full_request_becomes_the_key_it_describes() {
        let new = request(serde_json::json!({
            "name": " ci ", "owner": "alice", "scopes": ["chat", "Embeddings"],
            "models": ["tiny"], "expires_in_secs": 60, "rpm": 10, "tpm": 1000,
            "max_concurrent": 2, "budget": {"usd": 5.25, "period": "monthly"}
        }))
        .unwrap();
        assert_eq!(new.name, "ci");
        assert_eq!(new.owner, "alice");
        assert_eq!(new.scopes, BTreeSet::from([Scope::Chat, Scope::Embeddings]));
        assert_eq!(new.models, Some(BTreeSet::from(["tiny".to_owned()])));
        assert_eq!(new.expires_at, Some(1_060));
        assert_eq!(new.limits.rpm, Some(10));
        assert_eq!(
            new.limits.budget,
            Some(Budget {
                limit_micro_usd: 5_250_000,
                period: BudgetPeriod::Monthly
            })
        );
    }

    #[test]
    fn safety_checks_are_parsed_or_refused_by_name() {
        let new = request(serde_json::json!({"name": "ci", "safety": "output"})).unwrap();
        assert_eq!(new.safety, Some(SafetyChecks::Output));
        let new = request(serde_json::json!({"name": "ci"})).unwrap();
        assert_eq!(new.safety, None);
        let err = request(serde_json::json!({"name": "ci", "safety": "sometimes"})).unwrap_err();
        assert!(matches!(err, ApiError::InvalidRequest { param: Some(p), .. } if p == "safety"));
    }

    #[test]
    fn defaults_match_the_cli() {
        let new = request(serde_json::json!({"name": "ci", "expires_at": 5})).unwrap();
        assert_eq!(new.owner, "ci");
        assert_eq!(new.scopes, Scope::all_user());
        assert_eq!(new.models, None);
        assert_eq!(new.expires_at, Some(5));
        assert!(new.limits.is_unlimited());
    }

    #[test]
    fn bad_fields_are_named() {
        use serde_json::json;
        let cases = [
            (json!({}), "name"),
            (json!({"name": "  "}), "name"),
            (json!({"name": "n", "owner": ""}), "owner"),
            (json!({"name": "n", "scopes": []}), "scopes"),
            (
                json!({"name": "n", "scopes": ["chat", "root"]}),
                "scopes[1]",
            ),
            (json!({"name": "n", "models": []}), "models"),
            (json!({"name": "n", "models": ["a", "\n"]}), "models[1]"),
            (
                json!({"name": "n", "expires_at": 5, "expires_in_secs": 5}),
                "expires_in_secs",
            ),
            (
                json!({"name": "n", "expires_in_secs": 0}),
                "expires_in_secs",
            ),
            (json!({"name": "n", "expires_at": -1}), "expires_at"),
            (json!({"name": "n", "rpm": 0}), "rpm"),
            (json!({"name": "n", "tpm": -5}), "tpm"),
            (json!({"name": "n", "max_concurrent": 0}), "max_concurrent"),
            (
                json!({"name": "n", "budget": {"usd": -1, "period": "daily"}}),
                "budget.usd",
            ),
            (
                json!({"name": "n", "budget": {"usd": 1e12, "period": "daily"}}),
                "budget.usd",
            ),
            (
                json!({"name": "n", "budget": {"usd": 1, "period": "weekly"}}),
                "budget.period",
            ),
            (json!({"name": "n", "budget": {"usd": 1}}), "budget.period"),
            (json!({"name": "n", "scope": ["chat"]}), "scope"),
        ];
        for (body, want) in cases {
            assert_eq!(param_of(body.clone()).as_deref(), Some(want), "{body}");
        }
    }

    #[test]
    fn a_zero_budget_is_allowed() {
        let new =
            request(serde_json::json!({"name": "n", "budget": {"usd": 0, "period": "total"}}))
                .unwrap();
        assert_eq!(new.limits.budget.map(|b| b.limit_micro_usd), Some(0));
    }

    #[test]
    fn the_view_holds_no_secret_and_says_whether_the_key_works() {
        let mut new = NewKey::new("n", "o");
        new.limits.budget = Some(Budget {
            limit_micro_usd: 1_500_000,
            period: BudgetPeriod::Daily,
        });
        let record = KeyRecord {
            id: "k1".into(),
            name: "n".into(),
            owner: "o".into(),
            prefix: "psk-abcdefgh".into(),
            created_at: 1,
            revoked_at: None,
            scopes: new.scopes,
            models: None,
            expires_at: Some(100),
            limits: new.limits,
            safety: Some(SafetyChecks::Output),
        };
        let json = serde_json::to_value(KeyOut::new(record.clone(), 99)).unwrap();
        assert_eq!(json["status"], "active");
        assert_eq!(json["limits"]["budget"]["usd"], 1.5);
        assert_eq!(json["limits"]["budget"]["period"], "daily");
        assert!(json.get("key").is_none() && json.get("sha256").is_none());
        assert_eq!(KeyOut::new(record.clone(), 100).status, KeyStatus::Expired);
        let revoked = KeyRecord {
            revoked_at: Some(50),
            ..record
        };
        assert_eq!(KeyOut::new(revoked, 0).status, KeyStatus::Revoked);
    }
}
