//! `GET /v1/usage`: requests, tokens and cost by UTC day and model. A caller sees its own usage;
//! an admin sees everyone's, or one principal's with `?principal=`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use passerelle_store::{Scope, UsageBucket, UsageQuery, unix_now};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

const SECS_PER_DAY: u64 = 86_400;
/// The window when the caller names no start: the last 30 days.
const DEFAULT_WINDOW_DAYS: u64 = 30;
/// The longest window one request may cover; every day in it is a read.
const MAX_WINDOW_DAYS: u64 = 366;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    /// Seconds since the epoch; default 30 days before `end_time`.
    start_time: Option<u64>,
    /// Seconds since the epoch; default now.
    end_time: Option<u64>,
    /// Whose usage: the caller's own unless an admin names someone.
    principal: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct UsageReport {
    object: &'static str,
    start_time: u64,
    end_time: u64,
    data: Vec<UsageRow>,
    total: Totals,
}

/// One principal's use of one model on one UTC day.
#[derive(Debug, Serialize)]
struct UsageRow {
    day: String,
    principal: String,
    model: String,
    #[serde(flatten)]
    totals: Totals,
}

#[derive(Debug, Default, Serialize)]
struct Totals {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    cache_hits: u64,
    cost_usd: f64,
    #[serde(skip)]
    cost_micro_usd: u64,
}

impl Totals {
    fn of(bucket: &UsageBucket) -> Self {
        let mut totals = Self::default();
        totals.add(bucket);
        totals
    }

    fn add(&mut self, bucket: &UsageBucket) {
        self.requests += bucket.requests;
        self.prompt_tokens += bucket.prompt_tokens;
        self.completion_tokens += bucket.completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
        self.cache_hits += bucket.cache_hits;
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(bucket.cost_micro_usd);
        // Micro-dollars are exact; the dollar figure is derived once from their sum.
        self.cost_usd = self.cost_micro_usd as f64 / 1e6;
    }
}

pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let Query(params) =
        params.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))?;
    let query = usage_query(&principal, params, unix_now())?;
    let buckets = state.store().usage_summary(&query).await?;
    let mut total = Totals::default();
    let data = buckets
        .iter()
        .map(|bucket| {
            total.add(bucket);
            UsageRow {
                day: bucket.day.clone(),
                principal: bucket.principal.clone(),
                model: bucket.model.clone(),
                totals: Totals::of(bucket),
            }
        })
        .collect();
    Ok(Json(UsageReport {
        object: "list",
        start_time: query.since,
        end_time: query.until,
        data,
        total,
    }))
}

/// What the caller may see of what it asked for.
fn usage_query(
    principal: &Principal,
    params: UsageParams,
    now: u64,
) -> Result<UsageQuery, ApiError> {
    let until = params.end_time.unwrap_or(now);
    let since = params
        .start_time
        .unwrap_or_else(|| until.saturating_sub(DEFAULT_WINDOW_DAYS * SECS_PER_DAY));
    if until < since {
        return Err(ApiError::invalid_param(
            "end_time",
            "end_time must not be before start_time",
        ));
    }
    if until / SECS_PER_DAY - since / SECS_PER_DAY >= MAX_WINDOW_DAYS {
        return Err(ApiError::invalid_param(
            "start_time",
            format!("a usage query covers at most {MAX_WINDOW_DAYS} days"),
        ));
    }
    let admin = principal.has_scope(Scope::Admin);
    let whose = match params.principal {
        Some(name) if admin || name == principal.id() => Some(name),
        Some(_) => {
            return Err(ApiError::ScopeForbidden {
                scope: Scope::Admin,
            });
        }
        None if admin => None,
        None => Some(principal.id().to_owned()),
    };
    Ok(UsageQuery {
        principal: whose,
        since,
        until,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::ratelimit::Limits;

    use super::*;

    fn params(start: Option<u64>, end: Option<u64>, who: Option<&str>) -> UsageParams {
        UsageParams {
            start_time: start,
            end_time: end,
            principal: who.map(str::to_owned),
        }
    }

    fn user(scopes: &[Scope]) -> Principal {
        Principal::from_jwt(
            "alice".to_owned(),
            Some(scopes.iter().copied().collect::<BTreeSet<_>>()),
            Limits::UNLIMITED,
        )
    }

    const NOW: u64 = 1_790_000_000;

    #[test]
    fn a_caller_sees_its_own_usage_over_the_last_30_days_by_default() {
        let query = usage_query(&user(&[Scope::Chat]), params(None, None, None), NOW).unwrap();
        assert_eq!(query.principal.as_deref(), Some("alice"));
        assert_eq!(query.until, NOW);
        assert_eq!(query.since, NOW - 30 * SECS_PER_DAY);
    }

    #[test]
    fn only_admins_see_others_or_everyone() {
        let mallory = params(None, None, Some("bob"));
        assert!(matches!(
            usage_query(&user(&[Scope::Chat]), mallory, NOW),
            Err(ApiError::ScopeForbidden {
                scope: Scope::Admin
            })
        ));
        let own = usage_query(
            &user(&[Scope::Chat]),
            params(None, None, Some("alice")),
            NOW,
        );
        assert_eq!(own.unwrap().principal.as_deref(), Some("alice"));
        let admin = user(&[Scope::Admin]);
        let bob = usage_query(&admin, params(None, None, Some("bob")), NOW).unwrap();
        assert_eq!(bob.principal.as_deref(), Some("bob"));
        let all = usage_query(&admin, params(None, None, None), NOW).unwrap();
        assert_eq!(all.principal, None);
    }

    #[test]
    fn windows_are_checked() {
        let caller = user(&[Scope::Chat]);
        let backwards = usage_query(&caller, params(Some(NOW), Some(NOW - 1), None), NOW);
        assert!(
            matches!(backwards, Err(ApiError::InvalidRequest { param: Some(p), .. }) if p == "end_time")
        );
        let long = usage_query(&caller, params(Some(0), Some(NOW), None), NOW);
        assert!(
            matches!(long, Err(ApiError::InvalidRequest { param: Some(p), .. }) if p == "start_time")
        );
        let year = usage_query(
            &caller,
            params(Some(NOW - 365 * SECS_PER_DAY), None, None),
            NOW,
        );
        assert!(year.is_ok());
    }
}
