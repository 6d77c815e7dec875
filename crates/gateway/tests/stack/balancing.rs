//! `dns:///host:port` endpoints: the gateway resolves the name and balances its calls over
//! every address, the way it reaches the replicas behind a Kubernetes headless Service.

use std::sync::Arc;

use passerelle_gateway::{AppState, GatewayConfig};
use passerelle_store::{EmbeddedStore, StaticKeys};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served};

async fn chat_through(llm_endpoint: String) -> (StatusCode, Value) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let config = GatewayConfig {
        llm_endpoint,
        ..GatewayConfig::default()
    };
    let registry = prometheus::Registry::new();
    let state = AppState::new(config, store, StaticKeys::from_plaintext(["k"]), &registry).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(passerelle_gateway::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth("k")
        .json(&json!({
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 3,
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.json().await.unwrap();
    let _ = stop.send(());
    let _ = server.await;
    (status, body)
}

#[tokio::test]
async fn a_dns_endpoint_reaches_the_service_through_the_balancer() {
    let served = Served::start(Format::Gguf).await;
    let address = served
        .stack
        .llm_endpoint()
        .trim_start_matches("http://")
        .to_owned();
    let port = address.rsplit_once(':').unwrap().1;
    // An address literal, and a name that may also resolve to ::1, where nothing listens: the
    // balancer answers from the address that does.
    for endpoint in [
        format!("dns:///{address}"),
        format!("dns:///localhost:{port}"),
    ] {
        let (status, body) = chat_through(endpoint.clone()).await;
        assert_eq!(status, StatusCode::OK, "{endpoint}: {body}");
        assert_eq!(body["usage"]["completion_tokens"], 3, "{endpoint}: {body}");
    }
}

#[tokio::test]
async fn a_malformed_dns_endpoint_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let config = GatewayConfig {
        llm_endpoint: "dns:///no-port".to_owned(),
        ..GatewayConfig::default()
    };
    let registry = prometheus::Registry::new();
    let Err(err) = AppState::new(config, store, StaticKeys::default(), &registry) else {
        panic!("a malformed dns:/// endpoint was accepted");
    };
    assert!(err.to_string().contains("dns:///host:port"), "{err}");
}
