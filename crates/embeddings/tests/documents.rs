//! The document store over real gRPC on loopback with the real all-MiniLM-L6-v2 weights:
//! ingestion cut by the model's tokenizer, retrieval by meaning, namespaces, errors, and
//! documents surviving a restart.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use common::{MODEL_ID, minilm_dir};
use passerelle_embeddings::{DocumentsConfig, EmbeddingsServiceConfig, serve};
use passerelle_proto::embeddings::{
    DeleteDocumentRequest, Document, EmbedRequest, GetDocumentRequest, IngestDocumentRequest,
    ListDocumentsRequest, RetrieveRequest, embeddings_client::EmbeddingsClient,
};
use prometheus::Registry;
use tokio::sync::oneshot;
use tonic::{Code, transport::Channel};

struct Server {
    addr: SocketAddr,
    registry: Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), passerelle_embeddings::EmbeddingsError>>,
}

impl Server {
    async fn start(documents: DocumentsConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new();
        let (shutdown, stop) = oneshot::channel::<()>();
        let config = EmbeddingsServiceConfig {
            model_path: minilm_dir().to_path_buf(),
            model_id: MODEL_ID.to_owned(),
            threads: Some(2),
            queue_capacity: 8,
            documents,
            ..EmbeddingsServiceConfig::default()
        };
        let task = tokio::spawn(serve(config, listener, registry.clone(), async {
            let _ = stop.await;
        }));
        let server = Self {
            addr,
            registry,
            shutdown: Some(shutdown),
            task,
        };
        server.wait_until_ready().await;
        server
    }

    async fn client(&self) -> EmbeddingsClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        EmbeddingsClient::new(channel)
    }

    /// Polls `Embed` until the model answers, so ingestion never meets a loading model.
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut client = self.client().await;
        loop {
            let probe = EmbedRequest {
                inputs: vec!["ready?".to_owned()],
                ..Default::default()
            };
            match client.embed(probe).await {
                Ok(_) => return,
                Err(status) if status.code() == Code::Unavailable => {}
                Err(status) => panic!("{status}"),
            }
            assert!(Instant::now() < deadline, "the model never loaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

const CATS: &str = "Cats are small carnivorous mammals kept as pets. They purr when content, \
                    sleep most of the day and groom themselves with their rough tongues.";
const ROME: &str = "The Roman Empire was founded in 27 BC when Augustus became emperor. Its \
                    legions built roads and aqueducts across Europe, and Rome ruled the \
                    Mediterranean for centuries.";
const VOLCANO: &str = "Volcanoes erupt when magma rises through the crust. Lava flows, ash \
                       clouds and pyroclastic flows make eruptions dangerous to nearby towns.";

fn ingest(namespace: &str, title: &str, text: &str) -> IngestDocumentRequest {
    IngestDocumentRequest {
        namespace: namespace.to_owned(),
        title: title.to_owned(),
        text: text.to_owned(),
        ..Default::default()
    }
}

fn retrieve(namespace: &str, query: &str, top_k: u32) -> RetrieveRequest {
    RetrieveRequest {
        namespace: namespace.to_owned(),
        query: query.to_owned(),
        top_k,
        ..Default::default()
    }
}

async fn store_three(client: &mut EmbeddingsClient<Channel>, namespace: &str) -> Vec<Document> {
    let mut stored = Vec::new();
    for (title, text) in [("Cats", CATS), ("Rome", ROME), ("Volcanoes", VOLCANO)] {
        let response = client
            .ingest_document(ingest(namespace, title, text))
            .await
            .unwrap()
            .into_inner();
        stored.push(response.document.unwrap());
    }
    stored
}

#[tokio::test]
async fn documents_are_found_by_meaning_within_their_namespace_only() {
    let server = Server::start(DocumentsConfig::default()).await;
    let mut client = server.client().await;
    let stored = store_three(&mut client, "tenant-a").await;
    assert!(stored.iter().all(|d| d.id.starts_with("doc_")));
    assert_eq!(stored[0].chunks, 1);
    assert_eq!(stored[0].model, MODEL_ID);
    assert_eq!(stored[0].bytes, CATS.len() as u64);

    let found = client
        .retrieve(retrieve("tenant-a", "Which animal purrs?", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.chunks.len(), 2);
    assert_eq!(found.chunks[0].document_id, stored[0].id);
    assert_eq!(found.chunks[0].title, "Cats");
    assert_eq!(found.chunks[0].text, CATS);
    assert!(found.chunks[0].score > found.chunks[1].score);
    assert!(found.usage.unwrap().prompt_tokens > 0);

    let found = client
        .retrieve(retrieve("tenant-a", "Who was the first Roman emperor?", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.chunks[0].document_id, stored[1].id);

    // A filter keeps the search to the documents named; a threshold drops weak matches.
    let mut only_volcanoes = retrieve("tenant-a", "Which animal purrs?", 3);
    only_volcanoes.document_ids = vec![stored[2].id.clone()];
    let found = client.retrieve(only_volcanoes).await.unwrap().into_inner();
    assert!(found.chunks.iter().all(|c| c.document_id == stored[2].id));
    let mut strict = retrieve("tenant-a", "Which animal purrs?", 3);
    strict.min_score = Some(0.99);
    assert!(
        client
            .retrieve(strict)
            .await
            .unwrap()
            .into_inner()
            .chunks
            .is_empty()
    );

    // Another namespace sees nothing of tenant-a's.
    let list = |namespace: &str| ListDocumentsRequest {
        namespace: namespace.to_owned(),
    };
    assert!(
        client
            .list_documents(list("tenant-b"))
            .await
            .unwrap()
            .into_inner()
            .documents
            .is_empty()
    );
    assert!(
        client
            .retrieve(retrieve("tenant-b", "Which animal purrs?", 3))
            .await
            .unwrap()
            .into_inner()
            .chunks
            .is_empty()
    );
    let other = client
        .get_document(GetDocumentRequest {
            namespace: "tenant-b".to_owned(),
            document_id: stored[0].id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);

    let listed = client
        .list_documents(list("tenant-a"))
        .await
        .unwrap()
        .into_inner()
        .documents;
    assert_eq!(listed.len(), 3);

    let metrics = passerelle_telemetry::metrics::encode_text(&server.registry);
    for line in [
        "passerelle_documents_ingested_total 3",
        "passerelle_document_chunks_ingested_total 3",
        "passerelle_documents 3",
        "passerelle_documents_retrieval_seconds_count",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_long_document_is_cut_into_chunks_that_fit_the_budget() {
    let server = Server::start(DocumentsConfig::default()).await;
    let mut client = server.client().await;
    let text = [CATS, ROME, VOLCANO].join("\n\n").repeat(6);
    let mut request = ingest("n", "Mixed", &text);
    request.chunk_tokens = 48;
    request.chunk_overlap_tokens = Some(12);
    let document = client
        .ingest_document(request)
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    assert!(document.chunks > 6, "{document:?}");
    assert!(document.tokens > 48 * 6);

    let found = client
        .retrieve(retrieve("n", "lava and ash", 50))
        .await
        .unwrap()
        .into_inner()
        .chunks;
    assert_eq!(found.len() as u32, document.chunks);
    // Every chunk, embedded alone, is within 48 tokens plus [CLS] and [SEP].
    let texts: Vec<String> = found.iter().map(|c| c.text.clone()).collect();
    for chunk in &texts {
        let embedded = client
            .embed(EmbedRequest {
                inputs: vec![chunk.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        let tokens = embedded.into_inner().usage.unwrap().prompt_tokens;
        assert!(tokens <= 48 + 2, "{tokens} tokens in {chunk:?}");
    }
    for chunk in &texts {
        assert!(
            text.contains(chunk.as_str()),
            "a chunk is a slice of the text"
        );
        assert!(!chunk.starts_with(char::is_whitespace) && !chunk.ends_with(char::is_whitespace));
    }

    // Accents, emoji and CJK: token offsets are bytes, chunks stay whole characters.
    let unicode = "Ünïcödé façade naïve café. 🎉 Émoji party ünder the stars!                    東京は日本の首都です。大阪は大きな都市です。"
        .repeat(4);
    let mut request = ingest("n", "Unicode", &unicode);
    request.chunk_tokens = 16;
    request.chunk_overlap_tokens = Some(4);
    let document = client
        .ingest_document(request)
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    assert!(document.chunks > 4, "{document:?}");
    let mut filter = retrieve("n", "東京", 50);
    filter.document_ids = vec![document.id.clone()];
    let found = client.retrieve(filter).await.unwrap().into_inner().chunks;
    assert_eq!(found.len() as u32, document.chunks);
    for chunk in &found {
        assert!(unicode.contains(chunk.text.as_str()), "{:?}", chunk.text);
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let server = Server::start(DocumentsConfig {
        max_document_bytes: 1000,
        max_chunks_per_namespace: 2,
        ..DocumentsConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let param = |status: &tonic::Status| {
        status
            .metadata()
            .get(passerelle_proto::metadata::PARAM)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let empty = client
        .ingest_document(ingest("n", "t", " \n "))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(param(&empty).as_deref(), Some("text"));
    let big = client
        .ingest_document(ingest("n", "t", &"word ".repeat(300)))
        .await
        .unwrap_err();
    assert_eq!(param(&big).as_deref(), Some("text"));
    assert!(big.message().contains("1000 bytes"), "{}", big.message());
    let mut bad_chunk = ingest("n", "t", CATS);
    bad_chunk.chunk_tokens = 1000;
    let status = client.ingest_document(bad_chunk).await.unwrap_err();
    assert_eq!(param(&status).as_deref(), Some("chunk_tokens"));
    let mut other_model = ingest("n", "t", CATS);
    other_model.model = "gpt-embed".to_owned();
    assert_eq!(
        client
            .ingest_document(other_model)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // The chunk bound: two one-chunk documents fit, a third does not.
    client
        .ingest_document(ingest("n", "a", CATS))
        .await
        .unwrap();
    client
        .ingest_document(ingest("n", "b", ROME))
        .await
        .unwrap();
    let full = client
        .ingest_document(ingest("n", "c", VOLCANO))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition);
    assert!(full.message().contains("limit of 2"), "{}", full.message());

    let status = client
        .retrieve(retrieve("n", "cats", 51))
        .await
        .unwrap_err();
    assert_eq!(param(&status).as_deref(), Some("top_k"));
    let mut unknown = retrieve("n", "cats", 3);
    unknown.document_ids = vec!["doc_missing".to_owned()];
    let status = client.retrieve(unknown).await.unwrap_err();
    assert_eq!(param(&status).as_deref(), Some("document_ids[0]"));
    let missing = client
        .delete_document(DeleteDocumentRequest {
            namespace: "n".to_owned(),
            document_id: "doc_missing".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn documents_survive_a_restart_and_deletes_stick() {
    let dir = tempfile::tempdir().unwrap();
    let config = || DocumentsConfig {
        dir: Some(dir.path().join("documents")),
        ..DocumentsConfig::default()
    };
    let server = Server::start(config()).await;
    let mut client = server.client().await;
    let stored = store_three(&mut client, "key_1").await;
    let mut replaced = ingest("key_1", "Cats, revised", CATS);
    replaced.document_id = Some(stored[0].id.clone());
    replaced.metadata.insert("rev".to_owned(), "2".to_owned());
    client.ingest_document(replaced).await.unwrap();
    client
        .delete_document(DeleteDocumentRequest {
            namespace: "key_1".to_owned(),
            document_id: stored[1].id.clone(),
        })
        .await
        .unwrap();
    server.stop().await;

    let server = Server::start(config()).await;
    let mut client = server.client().await;
    let listed = client
        .list_documents(ListDocumentsRequest {
            namespace: "key_1".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .documents;
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(listed.len(), 2, "{ids:?}");
    assert!(
        !ids.contains(&stored[1].id.as_str()),
        "the deleted one stays deleted"
    );
    let cats = listed.iter().find(|d| d.id == stored[0].id).unwrap();
    assert_eq!(cats.title, "Cats, revised");
    assert_eq!(cats.metadata["rev"], "2");
    let found = client
        .retrieve(retrieve("key_1", "Which animal purrs?", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.chunks[0].document_id, stored[0].id);
    server.stop().await;
    // Only the service's own files are there.
    assert!(Path::new(&dir.path().join("documents")).is_dir());
}
