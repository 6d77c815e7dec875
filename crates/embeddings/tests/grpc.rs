//! The service over real gRPC on loopback: health, Embed, ListModels, the semantic cache RPCs,
//! errors, and the metrics.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use common::{LinkedModel, MODEL_ID, fixture, max_abs_diff, minilm_dir};
use passerelle_embeddings::{EmbeddingsServiceConfig, TRUNCATED_METADATA, serve};
use passerelle_proto::{
    common::{ListModelsRequest, ModelState},
    embeddings::{
        CacheLookupRequest, CacheStoreRequest, EmbedRequest, TokenInput,
        embeddings_client::EmbeddingsClient,
    },
};
use prometheus::Registry;
use tokio::sync::oneshot;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SERVICE_NAME: &str = "passerelle.embeddings.v1.Embeddings";

struct Server {
    addr: SocketAddr,
    registry: Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), passerelle_embeddings::EmbeddingsError>>,
}

impl Server {
    async fn start(model_path: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new();
        let (shutdown, stop) = oneshot::channel::<()>();
        let config = EmbeddingsServiceConfig {
            model_path: model_path.to_path_buf(),
            model_id: MODEL_ID.to_owned(),
            source: "sentence-transformers/all-MiniLM-L6-v2".to_owned(),
            threads: Some(2),
            queue_capacity: 8,
            max_batch: 32,
            matryoshka: false,
            device: Default::default(),
            cache: Default::default(),
            documents: Default::default(),
        };
        let task = tokio::spawn(serve(config, listener, registry.clone(), async {
            let _ = stop.await;
        }));
        Self {
            addr,
            registry,
            shutdown: Some(shutdown),
            task,
        }
    }

    async fn channel(&self) -> Channel {
        // The listener is bound before `serve` runs, so the first connect succeeds.
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn health(&self) -> ServingStatus {
        let response = HealthClient::new(self.channel().await)
            .check(HealthCheckRequest {
                service: SERVICE_NAME.to_owned(),
            })
            .await
            .unwrap();
        response.into_inner().status()
    }

    /// Polls grpc.health.v1 until the service reports SERVING.
    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.health().await != ServingStatus::Serving {
            assert!(Instant::now() < deadline, "never became SERVING");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn client(&self) -> EmbeddingsClient<Channel> {
        EmbeddingsClient::new(self.channel().await)
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn request(inputs: &[&str]) -> EmbedRequest {
    EmbedRequest {
        model: MODEL_ID.to_owned(),
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        normalize: true,
        dimensions: None,
        request_id: "req-1".to_owned(),
        token_inputs: Vec::new(),
    }
}

#[tokio::test]
async fn token_ids_embed_like_the_text_they_encode() {
    let server = Server::start(minilm_dir()).await;
    server.wait_until_serving().await;
    let mut client = server.client().await;
    let texts = [
        "A cat sleeps on the sofa.",
        "Rust has no garbage collector.",
    ];
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(minilm_dir().join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let token_inputs: Vec<TokenInput> = texts
        .iter()
        .map(|text| TokenInput {
            ids: tokenizer.encode(*text, true).unwrap().get_ids().to_vec(),
        })
        .collect();
    let from_text = client.embed(request(&texts)).await.unwrap().into_inner();
    let mut by_ids = request(&[]);
    by_ids.token_inputs = token_inputs.clone();
    let from_ids = client.embed(by_ids).await.unwrap().into_inner();
    assert_eq!(from_ids.embeddings.len(), 2);
    for (a, b) in from_ids.embeddings.iter().zip(&from_text.embeddings) {
        assert!(max_abs_diff(&a.values, &b.values) <= 1e-5);
    }
    assert_eq!(from_ids.usage, from_text.usage);

    let mut both = request(&["x"]);
    both.token_inputs = token_inputs;
    assert_eq!(
        client.embed(both).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut outside = request(&[]);
    outside.token_inputs = vec![TokenInput {
        ids: vec![101, 30_522],
    }];
    let status = client.embed(outside).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("passerelle-param").unwrap(),
        "input[0]"
    );
    server.stop().await;
}

#[tokio::test]
async fn embed_and_list_models_over_grpc() {
    let server = Server::start(minilm_dir()).await;
    server.wait_until_serving().await;
    let mut client = server.client().await;

    let fixture = fixture();
    let inputs: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
    let response = client.embed(request(&inputs)).await.unwrap();
    assert_eq!(
        response
            .metadata()
            .get(TRUNCATED_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "one fixture input is longer than max_seq_length"
    );
    let response = response.into_inner();
    assert_eq!(response.model, MODEL_ID);
    assert_eq!(response.embeddings.len(), fixture.cases.len());
    for (embedding, case) in response.embeddings.iter().zip(&fixture.cases) {
        assert!(max_abs_diff(&embedding.values, &case.embedding) <= 1e-4);
    }
    let usage = response.usage.unwrap();
    let tokens: usize = fixture.cases.iter().map(|c| c.tokens).sum();
    assert_eq!(usage.prompt_tokens as usize, tokens);
    assert_eq!(usage.total_tokens, usage.prompt_tokens);
    assert_eq!(usage.completion_tokens, 0);

    // An empty model name means the service's model.
    let mut unnamed = request(&["short"]);
    unnamed.model.clear();
    let response = client.embed(unnamed).await.unwrap();
    assert!(response.metadata().get(TRUNCATED_METADATA).is_none());
    assert_eq!(response.into_inner().embeddings[0].values.len(), 384);

    let models = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    let model = &models[0];
    assert_eq!(model.id, MODEL_ID);
    assert_eq!(model.state(), ModelState::Ready);
    assert_eq!(model.context_length, 256);
    assert_eq!(model.family, "bert");
    assert_eq!(model.format, "safetensors");
    assert_eq!(model.source, "sentence-transformers/all-MiniLM-L6-v2");
    assert!(model.created_unix > 0);

    let metrics = passerelle_telemetry::metrics::encode_text(&server.registry);
    assert!(
        metrics.contains(r#"passerelle_embeddings_requests_total{outcome="ok"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "passerelle_embeddings_tokens_total {}",
            tokens + 3
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "passerelle_embeddings_inputs_total {}",
            fixture.cases.len() + 1
        )),
        "{metrics}"
    );
    assert!(metrics.contains("passerelle_embeddings_batch_seconds_bucket"));
    server.stop().await;
}

#[tokio::test]
async fn errors_keep_their_grpc_codes() {
    let server = Server::start(minilm_dir()).await;
    server.wait_until_serving().await;
    let mut client = server.client().await;

    let status = client.embed(request(&["ok", ""])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("passerelle-param").unwrap(),
        "input[1]"
    );
    let status = client.embed(request(&[])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut shortened = request(&["x"]);
    shortened.dimensions = Some(64);
    let status = client.embed(shortened).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("passerelle-param").unwrap(),
        "dimensions"
    );
    let too_many = vec!["x"; passerelle_embeddings::MAX_INPUTS + 1];
    assert_eq!(
        client.embed(request(&too_many)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut other = request(&["x"]);
    other.model = "text-embedding-3-small".to_owned();
    assert_eq!(
        client.embed(other).await.unwrap_err().code(),
        Code::NotFound
    );

    let status = client
        .cache_lookup(CacheLookupRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("passerelle-param").unwrap(),
        "namespace"
    );
    let status = client
        .cache_lookup(CacheLookupRequest {
            namespace: "t".to_owned(),
            prompt: "hi".to_owned(),
            min_similarity: 1.5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("passerelle-param").unwrap(),
        "min_similarity"
    );
    let status = client
        .cache_store(CacheStoreRequest {
            namespace: "t".to_owned(),
            prompt: "hi".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("passerelle-param").unwrap(),
        "response_json"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stored_answer_is_found_by_a_paraphrase_over_grpc() {
    let server = Server::start(minilm_dir()).await;
    server.wait_until_serving().await;
    let mut client = server.client().await;
    let answer = r#"{"id":"chatcmpl-1","choices":[]}"#;
    let stored = client
        .cache_store(CacheStoreRequest {
            namespace: "tenant-a/abc123".to_owned(),
            model: "llama".to_owned(),
            prompt: "How do I reset my password?".to_owned(),
            response_json: answer.to_owned(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stored.entry_id.is_empty());

    let lookup = |prompt: &str, namespace: &str| CacheLookupRequest {
        namespace: namespace.to_owned(),
        model: "llama".to_owned(),
        prompt: prompt.to_owned(),
        min_similarity: 0.0,
    };
    let hit = client
        .cache_lookup(lookup("How can I reset my password?", "tenant-a/abc123"))
        .await
        .unwrap()
        .into_inner();
    assert!(hit.hit);
    assert_eq!(hit.response_json, answer);
    assert_eq!(hit.entry_id, stored.entry_id);
    assert!(
        hit.similarity > 0.95 && hit.similarity < 1.0,
        "{}",
        hit.similarity
    );

    let exact = client
        .cache_lookup(lookup("How do I reset my password?", "tenant-a/abc123"))
        .await
        .unwrap()
        .into_inner();
    assert!(exact.hit);
    assert_eq!(exact.similarity, 1.0);

    for (prompt, namespace) in [
        ("What is the capital of France?", "tenant-a/abc123"),
        ("How do I reset my password?", "tenant-b/abc123"),
    ] {
        let miss = client
            .cache_lookup(lookup(prompt, namespace))
            .await
            .unwrap()
            .into_inner();
        assert!(!miss.hit);
        assert!(miss.response_json.is_empty() && miss.entry_id.is_empty());
    }

    let metrics = passerelle_telemetry::metrics::encode_text(&server.registry);
    for line in [
        r#"passerelle_semantic_cache_lookups_total{result="hit_exact"} 1"#,
        r#"passerelle_semantic_cache_lookups_total{result="hit_semantic"} 1"#,
        r#"passerelle_semantic_cache_lookups_total{result="miss"} 2"#,
        "passerelle_semantic_cache_entries 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_model_that_fails_to_load_is_never_serving() {
    let broken = LinkedModel::new(&["mean"], true, &["model.safetensors"]);
    let server = Server::start(broken.path()).await;
    let mut client = server.client().await;
    // ListModels answers throughout; poll it until the load has failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let model = loop {
        let models = client
            .list_models(ListModelsRequest {})
            .await
            .unwrap()
            .into_inner()
            .models;
        if models[0].state() == ModelState::Failed {
            break models[0].clone();
        }
        assert_eq!(models[0].state(), ModelState::Loading);
        assert!(Instant::now() < deadline, "the load never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(model.error.contains("model.safetensors"), "{}", model.error);
    assert_eq!(server.health().await, ServingStatus::NotServing);
    let status = client.embed(request(&["hello"])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("model failed to load"),
        "{}",
        status.message()
    );
    server.stop().await;
}
