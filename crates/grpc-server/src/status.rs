//! Helpers for turning domain errors into `tonic::Status` at a service edge.
//!
//! Each service keeps its own `thiserror` enum and converts it in one `From` impl; these helpers
//! keep the messages and the retry hint consistent across services.

use std::time::Duration;

use tonic::{Code, Status};

pub use passerelle_proto::metadata::{
    PARAM as PARAM_METADATA, RETRY_AFTER as RETRY_AFTER_METADATA,
};

/// An `INVALID_ARGUMENT` status naming the request field at fault.
pub fn invalid_argument(param: &str, message: impl Into<String>) -> Status {
    let mut status = Status::invalid_argument(message);
    if let Ok(value) = param.parse() {
        status.metadata_mut().insert(PARAM_METADATA, value);
    }
    status
}

/// A status that tells the caller to retry after `after`.
pub fn retryable(code: Code, message: impl Into<String>, after: Duration) -> Status {
    let mut status = Status::new(code, message);
    let seconds = after.as_secs().max(1).to_string();
    if let Ok(value) = seconds.parse() {
        status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
    }
    status
}

/// The retry hint carried by `status`, if any.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_its_param() {
        let status = invalid_argument("input[2]", "must not be empty");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.metadata().get(PARAM_METADATA).unwrap(), "input[2]");
    }

    #[test]
    fn retry_hint_round_trips_and_is_at_least_one_second() {
        let status = retryable(Code::Unavailable, "loading", Duration::from_millis(200));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(retry_after(&status), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&Status::internal("x")), None);
    }
}
