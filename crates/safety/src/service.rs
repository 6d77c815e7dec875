//! The `passerelle.safety.v1.Safety` gRPC service over a [`Pipeline`]. Generated types stop
//! here: each handler validates its request into the crate's types and turns the verdict back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use passerelle_proto::{
    common::{self, ListModelsRequest, ListModelsResponse},
    safety::{
        CategoryViolation, CheckRequest, CheckResponse, Layer, PiiSpan, RedactRequest,
        RedactResponse, RedactedMessage, Verdict as ProtoVerdict, safety_server::Safety,
    },
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    error::SafetyError,
    layer::Pipeline,
    metrics::SafetyMetrics,
    request::{self, RequestLimits},
    verdict::{CheckInput, LayerKind, Verdict},
};

/// Checks and redaction through the configured layers.
#[derive(Debug, Clone)]
pub struct SafetyService {
    pipeline: Pipeline,
    limits: RequestLimits,
    metrics: SafetyMetrics,
    started_unix: i64,
}

impl SafetyService {
    /// A service running `pipeline`, its metrics registered on `registry`.
    pub fn new(
        pipeline: Pipeline,
        limits: RequestLimits,
        registry: &prometheus::Registry,
    ) -> Result<Self, SafetyError> {
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        Ok(Self {
            pipeline,
            limits,
            metrics: SafetyMetrics::register(registry)?,
            started_unix,
        })
    }

    /// `model` names the classifier to use once several are served; today the whole pipeline
    /// runs, and a non-empty `model` must name one of its layers.
    fn require_model(&self, model: &str) -> Result<(), SafetyError> {
        let layers = self.pipeline.layers();
        if model.is_empty() || layers.iter().any(|layer| layer.info().id == model) {
            return Ok(());
        }
        let served: Vec<String> = layers.iter().map(|layer| layer.info().id).collect();
        Err(SafetyError::ModelNotFound {
            model: model.to_owned(),
            served: if served.is_empty() {
                "no layer is enabled".to_owned()
            } else {
                served.join(", ")
            },
        })
    }

    async fn run_check(&self, request: CheckRequest) -> Result<CheckResponse, SafetyError> {
        let started = Instant::now();
        self.require_model(&request.model)?;
        let input = request::check_input(request, &self.limits)?;
        let verdict = self.pipeline.check(&input).await?;
        let took = started.elapsed();
        self.metrics.check(input.stage, &verdict, took);
        log(&input, &verdict);
        Ok(check_response(&input, verdict, took))
    }
}

/// One line per check that did not pass as is; never the text, only what decided.
fn log(input: &CheckInput, verdict: &Verdict) {
    match verdict {
        Verdict::Safe => {}
        Verdict::Unsafe { layer, violation } => tracing::info!(
            stage = input.stage.label(),
            layer = layer.label(),
            category = %violation.category,
            rule_id = violation.rule_id.as_deref().unwrap_or(""),
            message_index = violation.message_index,
            "unsafe"
        ),
        Verdict::Redacted { redaction, .. } => tracing::debug!(
            stage = input.stage.label(),
            found = redaction.found.len(),
            "redacted"
        ),
    }
}

fn proto_layer(layer: LayerKind) -> Layer {
    match layer {
        LayerKind::Rules => Layer::Rules,
        LayerKind::Injection => Layer::Injection,
        LayerKind::Pii => Layer::Pii,
        LayerKind::LlamaGuard => Layer::LlamaGuard,
    }
}

fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn check_response(input: &CheckInput, verdict: Verdict, took: Duration) -> CheckResponse {
    let mut response = CheckResponse {
        latency_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    match verdict {
        Verdict::Safe => response.verdict = ProtoVerdict::Safe as i32,
        Verdict::Unsafe { layer, violation } => {
            response.verdict = ProtoVerdict::Unsafe as i32;
            response.decided_by = proto_layer(layer) as i32;
            response.score = violation.score;
            response.message_index = Some(index(violation.message_index));
            response.reason = match &violation.rule_id {
                Some(rule) => format!(
                    "rule {rule} ({}) matched message {}",
                    violation.category, violation.message_index
                ),
                None => format!(
                    "{} ({}) in message {}",
                    layer.label(),
                    violation.category,
                    violation.message_index
                ),
            };
            response.rule_id = violation.rule_id.unwrap_or_default();
            response.categories = vec![CategoryViolation {
                code: violation.category,
                name: violation.category_name,
                score: violation.score,
            }];
        }
        Verdict::Redacted { layer, redaction } => {
            response.verdict = ProtoVerdict::Redacted as i32;
            response.decided_by = proto_layer(layer) as i32;
            let mut kinds: Vec<&str> = Vec::new();
            for found in &redaction.found {
                if !kinds.contains(&found.kind.name()) {
                    kinds.push(found.kind.name());
                }
            }
            response.reason = format!("personal data redacted: {}", kinds.join(", "));
            response.pii = redaction
                .found
                .iter()
                .map(|found| PiiSpan {
                    kind: found.kind.name().to_owned(),
                    message_index: index(found.message_index),
                    start: index(found.start),
                    end: index(found.end),
                })
                .collect();
            let last = input.messages.len() - 1;
            response.redacted = redaction
                .messages
                .iter()
                .find(|(i, _)| *i == last)
                .map_or_else(|| input.messages[last].content.clone(), |(_, c)| c.clone());
            response.redacted_messages = redaction
                .messages
                .into_iter()
                .map(|(i, content)| RedactedMessage {
                    message_index: index(i),
                    content,
                })
                .collect();
        }
    }
    response
}

#[tonic::async_trait]
impl Safety for SafetyService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("safety.check", request_id = %request.request_id);
        match self.run_check(request).instrument(span).await {
            Ok(response) => Ok(Response::new(response)),
            Err(err) => {
                if matches!(err, SafetyError::InvalidArgument { .. }) {
                    self.metrics.invalid("check");
                }
                Err(err.into())
            }
        }
    }

    async fn redact(
        &self,
        request: Request<RedactRequest>,
    ) -> Result<Response<RedactResponse>, Status> {
        let texts =
            request::redact_texts(request.into_inner(), &self.limits).inspect_err(|_| {
                self.metrics.invalid("redact");
            })?;
        let mut response = RedactResponse::default();
        for (i, text) in texts.iter().enumerate() {
            let redacted = passerelle_pii::redact(text);
            for span in &redacted.spans {
                self.metrics.pii_found("redact", span.kind);
                response.spans.push(PiiSpan {
                    kind: span.kind.name().to_owned(),
                    message_index: index(i),
                    start: index(span.start),
                    end: index(span.end),
                });
            }
            response.texts.push(redacted.text);
        }
        Ok(Response::new(response))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let models = self
            .pipeline
            .layers()
            .iter()
            .map(|layer| {
                let info = layer.info();
                common::ModelInfo {
                    family: info.id.clone(),
                    id: info.id,
                    format: info.format,
                    source: info.source,
                    state: common::ModelState::Ready as i32,
                    created_unix: self.started_unix,
                    owned_by: "passerelle".to_owned(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }
}
