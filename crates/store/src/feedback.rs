//! Thumbs up or down on an answer, one per response and principal.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::StoreError;
use crate::keys::validate_label;

/// Longest accepted feedback comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 4096;

/// A rating. Serialized as the numbers `1` and `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rating {
    Up,
    Down,
}

impl Rating {
    /// `1` or `-1`.
    pub fn as_i8(self) -> i8 {
        match self {
            Rating::Up => 1,
            Rating::Down => -1,
        }
    }
}

impl TryFrom<i64> for Rating {
    type Error = StoreError;

    fn try_from(value: i64) -> Result<Self, StoreError> {
        match value {
            1 => Ok(Rating::Up),
            -1 => Ok(Rating::Down),
            other => Err(StoreError::InvalidInput(format!(
                "a rating is 1 (up) or -1 (down), not {other}"
            ))),
        }
    }
}

impl Serialize for Rating {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i8(self.as_i8())
    }
}

impl<'de> Deserialize<'de> for Rating {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        Rating::try_from(value).map_err(serde::de::Error::custom)
    }
}

/// One principal's rating of one response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub response_id: String,
    pub principal: String,
    pub rating: Rating,
    /// Free text, at most [`MAX_COMMENT_CHARS`] characters.
    pub comment: Option<String>,
    /// Seconds since the epoch.
    pub at: u64,
}

impl FeedbackRecord {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_label("response id", &self.response_id)?;
        validate_label("principal", &self.principal)?;
        if let Some(comment) = &self.comment
            && comment.chars().count() > MAX_COMMENT_CHARS
        {
            return Err(StoreError::InvalidInput(format!(
                "a feedback comment must be at most {MAX_COMMENT_CHARS} characters"
            )));
        }
        Ok(())
    }
}

/// Ratings given since some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FeedbackCounts {
    pub up: u64,
    pub down: u64,
}

/// Feedback on answers.
#[async_trait::async_trait]
pub trait FeedbackStore: Send + Sync + 'static {
    /// Stores a rating. A principal rates a response once: a second rating replaces the first.
    /// Whether the response belongs to the principal is the caller's check
    /// ([`crate::UsageStore::usage_by_response`]).
    async fn record_feedback(&self, record: &FeedbackRecord) -> Result<(), StoreError>;

    /// Ratings whose (latest) time is at or after `since`.
    async fn feedback_counts(&self, since: u64) -> Result<FeedbackCounts, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_are_plus_and_minus_one() {
        assert_eq!(serde_json::to_string(&Rating::Up).unwrap(), "1");
        assert_eq!(serde_json::to_string(&Rating::Down).unwrap(), "-1");
        assert_eq!(serde_json::from_str::<Rating>("-1").unwrap(), Rating::Down);
        assert!(serde_json::from_str::<Rating>("0").is_err());
        assert!(serde_json::from_str::<Rating>("\"up\"").is_err());
    }
}
