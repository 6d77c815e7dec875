//! The service over real gRPC on loopback: health, Generate, ListModels, Tokenize, errors and
//! cancellation by dropping the response stream.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{MODEL_ID, tiny};
use passerelle_llm::{BatchConfig, LlmServiceConfig, serve};
use passerelle_proto::{
    common::{ListModelsRequest, ModelState},
    llm::{
        FinishReason, GenerateRequest, LogprobsOptions, Prompt, SamplingParams, StoppingCriteria,
        TokenizeRequest, generate_response::Event, llm_client::LlmClient, prompt,
    },
};
use prometheus::Registry;
use tokio::sync::oneshot;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SERVICE_NAME: &str = "passerelle.llm.v1.Llm";

struct Server {
    addr: SocketAddr,
    registry: Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), passerelle_llm::LlmError>>,
    _model: passerelle_testkit::TinyQwen2,
}

impl Server {
    async fn start(seed: u64) -> Self {
        let model = tiny(seed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new();
        let (shutdown, stop) = oneshot::channel::<()>();
        let config = LlmServiceConfig {
            model_path: model.gguf_path(),
            model_id: MODEL_ID.to_owned(),
            source: "testkit:tiny".to_owned(),
            device: passerelle_llm::DeviceChoice::Cpu,
            threads: Some(1),
            queue_capacity: 4,
            batch: BatchConfig::default(),
        };
        let task = tokio::spawn(serve(config, listener, registry.clone(), async {
            let _ = stop.await;
        }));
        let server = Self {
            addr,
            registry,
            shutdown: Some(shutdown),
            task,
            _model: model,
        };
        server.wait_until_serving().await;
        server
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Polls grpc.health.v1 until the service reports SERVING.
    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: SERVICE_NAME.to_owned(),
                    })
                    .await
                    .map(|r| r.into_inner().status);
                if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the service never became SERVING"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn metric(&self, needle: &str) -> f64 {
        let text = passerelle_telemetry::metrics::encode_text(&self.registry);
        text.lines()
            .find_map(|line| {
                line.strip_prefix(needle)
                    .map(|rest| rest.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{needle} not in\n{text}"))
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn text_request(text: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model: MODEL_ID.to_owned(),
        prompt: Some(Prompt {
            kind: Some(prompt::Kind::Text(text.to_owned())),
        }),
        sampling: Some(SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        }),
        stopping: Some(StoppingCriteria {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        }),
        request_id: "test-request".to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn generate_streams_started_deltas_and_finished_with_usage() {
    let server = Server::start(61).await;
    let mut client = LlmClient::new(server.channel().await);
    let mut request = text_request("Hello, world!", 8);
    request.logprobs = Some(LogprobsOptions {
        enabled: true,
        top_logprobs: 2,
    });
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        events.push(message.event.unwrap());
    }
    let Some(Event::Started(started)) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(started.model, MODEL_ID);
    let Some(Event::Finished(finished)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(finished.reason, FinishReason::Length as i32);
    let usage = finished.usage.unwrap();
    assert_eq!(usage.prompt_tokens, started.prompt_tokens);
    assert_eq!(usage.completion_tokens, 8);
    assert_eq!(usage.total_tokens, started.prompt_tokens + 8);
    let deltas: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Delta(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(deltas.iter().map(|d| d.token_ids.len()).sum::<usize>(), 8);
    assert!(deltas.iter().all(|d| d.logprobs.len() == d.token_ids.len()));
    assert!(
        deltas
            .iter()
            .flat_map(|d| &d.logprobs)
            .all(|lp| lp.top_logprobs.len() == 2)
    );
    server.stop().await;
}

#[tokio::test]
async fn list_models_and_tokenize_describe_the_model() {
    let server = Server::start(62).await;
    let mut client = LlmClient::new(server.channel().await);
    let models = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    let info = &models[0];
    assert_eq!(info.id, MODEL_ID);
    assert_eq!(info.family, "qwen2");
    assert_eq!(info.format, "gguf");
    assert_eq!(info.state, ModelState::Ready as i32);
    assert_eq!(info.context_length, 4096);
    assert_eq!(info.owned_by, "passerelle");
    assert_eq!(info.source, "testkit:tiny");
    assert!(info.created_unix > 1_600_000_000);

    let tokenized = client
        .tokenize(TokenizeRequest {
            model: MODEL_ID.to_owned(),
            prompt: Some(Prompt {
                kind: Some(prompt::Kind::Text("Hello, world!".into())),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokenized.text, "Hello, world!");
    assert!(!tokenized.ids.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn errors_keep_their_grpc_codes() {
    let server = Server::start(63).await;
    let mut client = LlmClient::new(server.channel().await);
    let mut unknown = text_request("Hi", 4);
    unknown.model = "gpt-4o".into();
    assert_eq!(
        client.generate(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let too_long = text_request("Hi", 100_000);
    let status = client.generate(too_long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status
            .metadata()
            .get(passerelle_llm::error::PARAM_METADATA)
            .unwrap(),
        "max_tokens"
    );
    let mut no_prompt = text_request("Hi", 4);
    no_prompt.prompt = None;
    assert_eq!(
        client.generate(no_prompt).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test]
async fn dropping_the_response_stream_cancels_the_generation() {
    let server = Server::start(64).await;
    let mut client = LlmClient::new(server.channel().await);
    let mut stream = client
        .generate(text_request("Hello", 4000))
        .await
        .unwrap()
        .into_inner();
    let mut deltas = 0;
    while deltas < 3 {
        if let Some(Event::Delta(_)) = stream.message().await.unwrap().unwrap().event {
            deltas += 1;
        }
    }
    drop(stream);
    let cancelled = r#"passerelle_llm_requests_total{outcome="cancelled"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric(cancelled) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the generation was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(server.metric("passerelle_llm_generated_tokens_total") < 1000.0);
    server.stop().await;
}

#[tokio::test]
async fn a_model_that_fails_to_load_is_reported_and_never_serving() {
    use candle_core::quantized::gguf_file;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma.gguf");
    let architecture = gguf_file::Value::String("gemma".into());
    gguf_file::write(
        &mut std::fs::File::create(&path).unwrap(),
        &[("general.architecture", &architecture)],
        &[],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = LlmServiceConfig {
        model_path: path,
        model_id: MODEL_ID.to_owned(),
        source: "gemma.gguf".to_owned(),
        device: passerelle_llm::DeviceChoice::Cpu,
        threads: Some(1),
        queue_capacity: 1,
        batch: BatchConfig::default(),
    };
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(config, listener, Registry::new(), async {
        let _ = stop.await;
    }));

    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            break channel;
        }
        assert!(
            Instant::now() < deadline,
            "the server never accepted connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut client = LlmClient::new(channel.clone());
    let info = loop {
        let info = client
            .list_models(ListModelsRequest {})
            .await
            .unwrap()
            .into_inner()
            .models
            .remove(0);
        if info.state != ModelState::Loading as i32 {
            break info;
        }
        assert!(Instant::now() < deadline, "the load never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(info.state, ModelState::Failed as i32);
    assert!(
        info.error.contains("unsupported architecture `gemma`"),
        "{}",
        info.error
    );
    let status = client.generate(text_request("Hi", 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE_NAME.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::NotServing as i32);
    let _ = shutdown.send(());
    task.await.unwrap().unwrap();
}
