//! What a key may do: its [`Scope`]s, its [`KeyLimits`] (rates, concurrency, budget) and the
//! [`SafetyChecks`] its requests get.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::time::{DAY_SECS, month_start};

/// Which stages of a key's requests the safety filter checks, when one runs. Serialized
/// lowercase; a key without one gets the gateway's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafetyChecks {
    /// Prompts and answers.
    Both,
    /// Prompts only.
    Input,
    /// Answers only.
    Output,
    /// Neither: for trusted internal callers such as evaluation jobs.
    None,
}

impl SafetyChecks {
    /// Whether prompts are checked.
    pub fn input(self) -> bool {
        matches!(self, SafetyChecks::Both | SafetyChecks::Input)
    }

    /// Whether answers are checked.
    pub fn output(self) -> bool {
        matches!(self, SafetyChecks::Both | SafetyChecks::Output)
    }
}

impl FromStr for SafetyChecks {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "both" => Ok(SafetyChecks::Both),
            "input" => Ok(SafetyChecks::Input),
            "output" => Ok(SafetyChecks::Output),
            "none" => Ok(SafetyChecks::None),
            other => Err(StoreError::InvalidInput(format!(
                "safety checks are both, input, output or none, not {other:?}"
            ))),
        }
    }
}

/// A family of endpoints a key may call. Serialized lowercase (`"chat"`, `"admin"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
    /// `/v1/audio/*` (transcription, diarization).
    Audio,
    /// `/v1/moderations`.
    Moderation,
    /// Document ingestion and retrieval.
    Documents,
    /// The admin API: keys, usage, audit, erasure.
    Admin,
}

impl Scope {
    /// Every scope, in declaration order.
    pub const ALL: [Scope; 7] = [
        Scope::Chat,
        Scope::Completions,
        Scope::Embeddings,
        Scope::Audio,
        Scope::Moderation,
        Scope::Documents,
        Scope::Admin,
    ];

    /// Every scope but [`Scope::Admin`]: what a new key gets when no scopes are named.
    pub fn all_user() -> BTreeSet<Scope> {
        Self::ALL
            .into_iter()
            .filter(|scope| *scope != Scope::Admin)
            .collect()
    }

    /// The lowercase name, as serialized and as the CLI takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Completions => "completions",
            Scope::Embeddings => "embeddings",
            Scope::Audio => "audio",
            Scope::Moderation => "moderation",
            Scope::Documents => "documents",
            Scope::Admin => "admin",
        }
    }

    /// Parses a comma-separated list (`"chat, embeddings"`); blanks are skipped.
    pub fn parse_list(list: &str) -> Result<BTreeSet<Scope>, StoreError> {
        list.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        let wanted = text.trim();
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| StoreError::InvalidScope(wanted.to_owned()))
    }
}

/// The names of every scope, for error messages.
pub(crate) fn scope_names() -> String {
    Scope::ALL.map(Scope::as_str).join(", ")
}

/// Per-key limits; `None` means "no limit of this kind" (the gateway's defaults may still apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Spending cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

impl KeyLimits {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    /// Rejects zero rates: a limit of zero would refuse every request, which is what revoking
    /// is for. A zero budget is allowed (a key parked until its budget is raised).
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        for (name, value) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrent", self.max_concurrent),
        ] {
            if value == Some(0) {
                return Err(StoreError::InvalidInput(format!(
                    "{name} must be at least 1 (leave it unset for no limit)"
                )));
            }
        }
        Ok(())
    }
}

/// A spending cap in millionths of a US dollar over a calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Most a key may spend in one period, in micro-USD (1 USD = 1,000,000).
    pub limit_micro_usd: u64,
    /// The period the cap applies to.
    pub period: BudgetPeriod,
}

/// The window a [`Budget`] resets on. Serialized lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// Each UTC day.
    Daily,
    /// Each UTC calendar month.
    Monthly,
    /// The key's whole life.
    Total,
}

impl BudgetPeriod {
    /// Unix time at which the period containing `now` began (UTC); 0 for [`BudgetPeriod::Total`].
    pub fn period_start(self, now: u64) -> u64 {
        match self {
            BudgetPeriod::Daily => now - now % DAY_SECS,
            BudgetPeriod::Monthly => month_start(now),
            BudgetPeriod::Total => 0,
        }
    }

    /// Unix time at which the next period begins, when a spent budget is available again;
    /// `None` for [`BudgetPeriod::Total`], which never resets.
    pub fn next_start(self, now: u64) -> Option<u64> {
        match self {
            BudgetPeriod::Daily => Some(self.period_start(now) + DAY_SECS),
            // 31 days past the start is always inside the next month.
            BudgetPeriod::Monthly => Some(month_start(self.period_start(now) + 31 * DAY_SECS)),
            BudgetPeriod::Total => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Total => "total",
        }
    }
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BudgetPeriod {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "daily" | "day" => Ok(BudgetPeriod::Daily),
            "monthly" | "month" => Ok(BudgetPeriod::Monthly),
            "total" => Ok(BudgetPeriod::Total),
            other => Err(StoreError::InvalidInput(format!(
                "unknown budget period {other:?}; expected daily, monthly or total"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_print_and_serialize_lowercase() {
        for scope in Scope::ALL {
            assert_eq!(scope.to_string().parse::<Scope>().unwrap(), scope);
            assert_eq!(
                serde_json::to_string(&scope).unwrap(),
                format!("\"{scope}\"")
            );
        }
        assert_eq!(" Chat ".parse::<Scope>().unwrap(), Scope::Chat);
        let err = "chats".parse::<Scope>().unwrap_err().to_string();
        assert!(
            err.contains("chats") && err.contains("embeddings, audio"),
            "{err}"
        );
    }

    #[test]
    fn user_scopes_exclude_admin() {
        let user = Scope::all_user();
        assert_eq!(user.len(), Scope::ALL.len() - 1);
        assert!(!user.contains(&Scope::Admin));
    }

    #[test]
    fn scope_lists_skip_blanks_and_reject_unknowns() {
        let parsed = Scope::parse_list("chat, embeddings,,").unwrap();
        assert_eq!(parsed, BTreeSet::from([Scope::Chat, Scope::Embeddings]));
        assert!(Scope::parse_list("chat,nope").is_err());
    }

    #[test]
    fn periods_start_on_utc_boundaries() {
        let now = 1_709_251_199 + 3_600; // 2024-03-01T00:59:59Z
        assert_eq!(BudgetPeriod::Daily.period_start(now), 1_709_251_200);
        assert_eq!(BudgetPeriod::Monthly.period_start(now), 1_709_251_200);
        assert_eq!(
            BudgetPeriod::Monthly.period_start(1_709_251_199),
            1_706_745_600
        );
        assert_eq!(BudgetPeriod::Total.period_start(now), 0);
        assert_eq!(
            "Monthly".parse::<BudgetPeriod>().unwrap(),
            BudgetPeriod::Monthly
        );
        assert!("weekly".parse::<BudgetPeriod>().is_err());
    }

    #[test]
    fn zero_rates_are_refused() {
        assert!(KeyLimits::default().validate().is_ok());
        let zero = KeyLimits {
            rpm: Some(0),
            ..KeyLimits::default()
        };
        assert!(zero.validate().is_err());
    }
}
