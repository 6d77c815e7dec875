//! The server answers health and reflection, reports per-service status, and drains on shutdown.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use passerelle_grpc_server::{GrpcServer, ServerConfig};

async fn start() -> (
    String,
    tonic_health::server::HealthReporter,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let server = GrpcServer::new(ServerConfig {
        drain_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    });
    let health = server.health();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
    });
    (address, health, stop_tx, task)
}

async fn channel(address: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(address)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_reports_the_status_a_service_sets() {
    let (address, health, stop, task) = start().await;
    let mut client = HealthClient::new(channel(address).await);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };

    let overall = client.check(check("")).await.unwrap().into_inner();
    assert_eq!(overall.status(), ServingStatus::Serving);

    health
        .set_service_status(
            "passerelle.llm.v1.Llm",
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    let llm = client
        .check(check("passerelle.llm.v1.Llm"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(llm.status(), ServingStatus::NotServing);

    health
        .set_service_status(
            "passerelle.llm.v1.Llm",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let llm = client
        .check(check("passerelle.llm.v1.Llm"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(llm.status(), ServingStatus::Serving);

    let unknown = client.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reflection_describes_every_passerelle_domain() {
    let (address, _health, stop, task) = start().await;
    let mut client = ServerReflectionClient::new(channel(address).await);
    for symbol in [
        "passerelle.llm.v1.Llm",
        "passerelle.safety.v1.Safety",
        "passerelle.asr.v1.Asr",
        "passerelle.diarization.v1.Diarization",
        "passerelle.embeddings.v1.Embeddings",
        "passerelle.common.v1.ModelAdmin",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        match response.message_response.unwrap() {
            MessageResponse::FileDescriptorResponse(files) => {
                assert!(!files.file_descriptor_proto.is_empty(), "{symbol}")
            }
            other => panic!("{symbol}: unexpected reflection answer {other:?}"),
        }
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
