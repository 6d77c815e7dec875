//! The gateway on per-core workers: one port shared by several threads, concurrent requests
//! answered, and a shutdown that drains every worker's streams.

use std::num::NonZeroUsize;
use std::sync::Arc;

use passerelle_gateway::{AppState, GatewayConfig, UpstreamConfig};
use passerelle_store::{EmbeddedStore, StaticKeys, UsageQuery};
use serde_json::json;

use super::mock::{Upstream, dead_url};
use super::{BOUND, KEY, ask, data_of, read_events_until, routing};

const WORKERS: usize = 3;

async fn state(upstream: &Upstream, data_dir: &std::path::Path) -> AppState {
    let closed = dead_url().await.trim_end_matches("/v1").to_owned();
    let config = GatewayConfig {
        routing: routing(vec![UpstreamConfig::new("remote", &upstream.base_url)]),
        ..GatewayConfig::new(closed)
    };
    AppState::new(
        config,
        Arc::new(EmbeddedStore::open(data_dir).unwrap()),
        StaticKeys::from_plaintext([KEY]),
        &prometheus::Registry::new(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_one_port_answer_concurrently_and_drain_on_shutdown() {
    let upstream = Upstream::start("w").await;
    let data_dir = tempfile::tempdir().unwrap();
    let state = state(&upstream, data_dir.path()).await;
    let count = NonZeroUsize::new(WORKERS).unwrap();
    let listeners =
        passerelle_gateway::workers::bind("127.0.0.1:0".parse().unwrap(), count).unwrap();
    assert_eq!(listeners.len(), WORKERS);
    let addr = listeners[0].local_addr().unwrap();
    assert!(listeners.iter().all(|l| l.local_addr().unwrap() == addr));
    // Another gateway cannot silently share the port.
    assert!(passerelle_gateway::workers::bind(addr, count).is_err());
    let base = format!("http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(passerelle_gateway::serve_workers(
        listeners,
        state.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    // A connection each, so the kernel spreads them over the workers.
    let answers = futures::future::join_all((0..32).map(|_| {
        let url = format!("{base}/v1/chat/completions");
        async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let response = tokio::time::timeout(
                BOUND,
                client
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&ask("remote"))
                    .send(),
            )
            .await
            .expect("answered in time")
            .unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        }
    }))
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "hello from w");
    }

    // A stream in flight when the signal comes is finished, not cut.
    let release = upstream.hold_streams();
    let mut body = ask("remote");
    body["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    read_events_until(&mut stream, &mut buffer, |e| e.contains("hello")).await;
    stop.send(()).unwrap();
    // Every worker stops accepting: poll until a fresh connection is refused.
    let deadline = tokio::time::Instant::now() + BOUND;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after shutdown"
        );
        tokio::task::yield_now().await;
    }
    assert!(!server.is_finished(), "stopped before the stream ended");
    release.notify_one();
    let rest = read_events_until(&mut stream, &mut buffer, |e| data_of(e) == Some("[DONE]")).await;
    assert!(!rest.is_empty());
    tokio::time::timeout(BOUND, server)
        .await
        .expect("the workers stopped in time")
        .unwrap()
        .unwrap();
    // The usage records reached the store before serving returned (the mock's answers all
    // carry one response id, which the store counts once).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = UsageQuery {
        principal: None,
        since: now - 86_400,
        until: now + 86_400,
    };
    let buckets = state.store().usage_summary(&query).await.unwrap();
    assert!(buckets.iter().any(|b| b.requests > 0), "{buckets:?}");
}
