//! One request is one trace across the gateway and the llm service.
//!
//! Its own test binary: the subscriber is installed for this thread only, and tracing's callsite
//! cache is shared by every test in a process, so tests running beside it would hide spans.

// Shared with the whole-stack tests, which use more of it.
#[allow(dead_code)]
#[path = "stack/support.rs"]
mod support;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;

use support::{Format, MODEL_ID, Served};

fn has_attribute(span: &SpanData, key: &str, value: &str) -> bool {
    span.attributes
        .iter()
        .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
}

// A current-thread runtime keeps every task (gateway, tonic server, client) on this thread, where
// the scoped subscriber below is installed.
#[tokio::test(flavor = "current_thread")]
async fn the_service_spans_belong_to_the_gateway_requests_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let served = Served::start(Format::Gguf).await;
    let request = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (status, _) = served
        .client()
        .post_json("/v1/chat/completions", &request)
        .await;
    assert_eq!(status, 200);
    served.stack.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let gateway = spans
        .iter()
        .find(|span| {
            span.name == "http_request" && has_attribute(span, "route", "/v1/chat/completions")
        })
        .expect("the gateway's request span");
    let service = spans
        .iter()
        .find(|span| span.name == "llm.generate")
        .expect("the llm service's generation span");
    // The service runs in tonic's own task, with no tracing parent of its own: it can only share
    // the gateway's trace id if the context crossed the gRPC hop in the metadata.
    assert_eq!(
        service.span_context.trace_id(),
        gateway.span_context.trace_id(),
        "one trace"
    );
    assert_ne!(service.parent_span_id, SpanId::INVALID);
    assert_ne!(
        gateway.span_context.trace_id(),
        opentelemetry::trace::TraceId::INVALID
    );
}
