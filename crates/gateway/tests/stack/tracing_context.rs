//! One request is one trace across the gateway and the llm service.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::support::{Format, MODEL_ID, Served};

// A current-thread runtime keeps every task (gateway, tonic server, client) on this thread, where
// the scoped subscriber below is installed.
#[tokio::test(flavor = "current_thread")]
async fn the_service_span_is_a_child_of_the_gateway_request() {
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
            span.name == "http_request"
                && span
                    .attributes
                    .iter()
                    .any(|kv| kv.value.as_str() == "/v1/chat/completions")
        })
        .expect("gateway request span");
    let rpc = spans
        .iter()
        .find(|span| {
            span.name == "grpc.request"
                && span
                    .attributes
                    .iter()
                    .any(|kv| kv.value.as_str().contains("Generate"))
        })
        .expect("llm service span");
    assert_eq!(
        rpc.span_context.trace_id(),
        gateway.span_context.trace_id(),
        "one trace"
    );
    assert_ne!(rpc.parent_span_id, opentelemetry::trace::SpanId::INVALID);
}
