//! What a call to a model service can fail with, classified once from its gRPC status.

use std::time::Duration;

use tonic::Code;

/// Retry hint when the service is overloaded and did not give its own.
const DEFAULT_OVERLOADED_RETRY: Duration = Duration::from_secs(1);
/// Retry hint when the service is down or loading a model and did not give its own.
const DEFAULT_UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);

/// Where a service names the request field an InvalidArgument is about.
pub use passerelle_proto::metadata::PARAM as PARAM_METADATA;

/// Parameters a service may name at the start of an InvalidArgument message (`top_k: must
/// be ...`), so the client's error can point at the field. Only request fields are listed: a
/// message starting with any other word is not taken for a parameter name.
const KNOWN_PARAMS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "echo",
];

/// A failed call to a model service, by what the gateway's client should do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The request was wrong (the client's mistake).
    #[error("{message}")]
    InvalidArgument {
        message: String,
        /// The request field at fault, when the service named one.
        param: Option<String>,
    },
    /// The service does not serve this model.
    #[error("{message}")]
    ModelNotFound { message: String },
    /// The service cannot do what was asked (a feature it lacks).
    #[error("{message}")]
    Unsupported { message: String },
    /// The service's queue is full; try again shortly.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Duration,
    },
    /// The service is down, starting, loading the model or draining.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// The request ran past its deadline.
    #[error("the request timed out")]
    DeadlineExceeded,
    /// The service failed, or broke the protocol; the gateway or the service has a bug.
    #[error("{message}")]
    Upstream { message: String },
}

impl BackendError {
    /// The service answered something the contract does not allow.
    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        BackendError::Upstream {
            message: format!("the model service broke the protocol: {}", what.into()),
        }
    }
}

/// The one table from gRPC codes to gateway errors. The HTTP status for each variant is in
/// `crate::error`.
impl From<tonic::Status> for BackendError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        let retry_after = retry_after(&status);
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                BackendError::InvalidArgument {
                    param: param_in_metadata(&status).or_else(|| param_named_in(&message)),
                    message,
                }
            }
            Code::NotFound => BackendError::ModelNotFound { message },
            Code::Unimplemented => BackendError::Unsupported { message },
            Code::ResourceExhausted => BackendError::Overloaded {
                message,
                retry_after: retry_after.unwrap_or(DEFAULT_OVERLOADED_RETRY),
            },
            // Cancelled and Aborted come from a service that is shutting down or shedding work.
            Code::Unavailable | Code::Cancelled | Code::Aborted => BackendError::Unavailable {
                message: unavailable_message(&status),
                retry_after: retry_after.unwrap_or(DEFAULT_UNAVAILABLE_RETRY),
            },
            Code::DeadlineExceeded => BackendError::DeadlineExceeded,
            // Unauthenticated and PermissionDenied mean the gateway's own credentials to the
            // service are wrong: the operator's problem, not the client's.
            Code::Ok
            | Code::Unknown
            | Code::Internal
            | Code::DataLoss
            | Code::AlreadyExists
            | Code::Unauthenticated
            | Code::PermissionDenied => BackendError::Upstream {
                message: format!("the model service failed: {message}"),
            },
        }
    }
}

/// tonic reports connection failures as Unavailable with transport detail ("tcp connect
/// error", ...) that means nothing to an API client; the detail goes to the log instead.
fn unavailable_message(status: &tonic::Status) -> String {
    let message = status.message();
    if message.is_empty()
        || message.contains("error trying to connect")
        || message.contains("tcp connect")
    {
        tracing::debug!(detail = %message, "model service unreachable");
        "The model service is unavailable; try again shortly.".to_owned()
    } else {
        message.to_owned()
    }
}

/// A `retry-after` (seconds) the service may attach to an overloaded or unavailable status.
fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let seconds: u64 = status
        .metadata()
        .get(passerelle_proto::metadata::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.clamp(1, 3600)))
}

/// The parameter named in [`PARAM_METADATA`], if it looks like a field path.
fn param_in_metadata(status: &tonic::Status) -> Option<String> {
    let param = status.metadata().get(PARAM_METADATA)?.to_str().ok()?;
    let plausible = !param.is_empty()
        && param.len() <= 64
        && param
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b));
    plausible.then(|| param.to_owned())
}

/// The parameter an InvalidArgument message names, when it starts with one (`top_k: ...`,
/// `top_k must ...`, `` `top_k` must ...``).
fn param_named_in(message: &str) -> Option<String> {
    let first = message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '`'))
        .next()?
        .trim_matches('`');
    KNOWN_PARAMS.contains(&first).then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn codes_map_to_what_the_client_should_do() {
        let cases = [
            (Status::invalid_argument("x"), "InvalidArgument"),
            (Status::out_of_range("x"), "InvalidArgument"),
            (Status::not_found("x"), "ModelNotFound"),
            (Status::unimplemented("x"), "Unsupported"),
            (Status::resource_exhausted("x"), "Overloaded"),
            (Status::unavailable("x"), "Unavailable"),
            (Status::cancelled("x"), "Unavailable"),
            (Status::deadline_exceeded("x"), "DeadlineExceeded"),
            (Status::internal("x"), "Upstream"),
            (Status::unauthenticated("x"), "Upstream"),
        ];
        for (status, want) in cases {
            let got = format!("{:?}", BackendError::from(status));
            assert!(got.starts_with(want), "{got} is not {want}");
        }
    }

    #[test]
    fn invalid_argument_names_a_leading_known_param() {
        let named = |m: &str| match BackendError::from(Status::invalid_argument(m)) {
            BackendError::InvalidArgument { param, .. } => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            named("top_k: must be at most 1000").as_deref(),
            Some("top_k")
        );
        assert_eq!(
            named("`max_tokens` exceeds the context").as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            named("temperature must be finite").as_deref(),
            Some("temperature")
        );
        assert_eq!(named("prompt is too long").as_deref(), Some("prompt"));
        assert_eq!(named("the prompt is too long"), None);
        assert_eq!(named("json_schema unsupported"), None);
    }

    #[test]
    fn invalid_argument_param_comes_from_metadata_first() {
        let mut status = Status::invalid_argument("the prompt and max_tokens exceed the context");
        status
            .metadata_mut()
            .insert(PARAM_METADATA, "max_tokens".parse().unwrap());
        match BackendError::from(status) {
            BackendError::InvalidArgument { param, .. } => {
                assert_eq!(param.as_deref(), Some("max_tokens"))
            }
            other => panic!("{other:?}"),
        }
        let mut status = Status::invalid_argument("x");
        status
            .metadata_mut()
            .insert(PARAM_METADATA, "not a param!".parse().unwrap());
        match BackendError::from(status) {
            BackendError::InvalidArgument { param, .. } => assert_eq!(param, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_hints_default_and_can_be_given() {
        match BackendError::from(Status::resource_exhausted("queue full")) {
            BackendError::Overloaded { retry_after, .. } => assert_eq!(retry_after.as_secs(), 1),
            other => panic!("{other:?}"),
        }
        let mut status = Status::unavailable("loading");
        status
            .metadata_mut()
            .insert("retry-after", "12".parse().unwrap());
        match BackendError::from(status) {
            BackendError::Unavailable {
                retry_after,
                message,
            } => {
                assert_eq!(retry_after.as_secs(), 12);
                assert_eq!(message, "loading");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transport_detail_is_not_shown_to_clients() {
        match BackendError::from(Status::unavailable("tcp connect error: Connection refused")) {
            BackendError::Unavailable { message, .. } => assert!(!message.contains("tcp")),
            other => panic!("{other:?}"),
        }
    }
}
