//! The semantic cache shared through Redis, on a real `redis-server` and the real
//! all-MiniLM-L6-v2: what one replica stores another finds, a replica started later replays
//! it, expired entries are not replayed, and losing Redis never costs a lookup or a store.
//!
//! Each `CacheHandle` is one replica (its own replica id and log tasks); they share one engine
//! only to save loading the model twice.

mod common;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use common::{MODEL_ID, config, engine, minilm_dir};
use passerelle_embeddings::{
    CacheConfig, EmbeddingHandle, EmbeddingsError, EmbeddingsServiceConfig,
    cache::{
        CacheHandle, CacheRedisConfig, Hit,
        request::{LookupQuery, StoreCommand},
    },
};
use passerelle_proto::embeddings::{
    CacheLookupRequest, CacheStoreRequest, embeddings_client::EmbeddingsClient,
};
use passerelle_testkit::redis::RedisServer;
use prometheus::Registry;

const ASKED: &str = "How do I reset my password?";
const PARAPHRASE: &str = "How can I reset my password?";
const ANSWER: &str = r#"{"choices":[{"message":{"content":"Settings > Security > Reset"}}]}"#;
/// How long a replica may take to see another's entry, or to notice Redis went away.
const PATIENCE: Duration = Duration::from_secs(15);
/// How long one lookup or store may take even while Redis is down.
const PROMPT: Duration = Duration::from_secs(5);

struct Replica {
    cache: CacheHandle,
    registry: Registry,
}

fn replica(engine: &EmbeddingHandle, redis: &RedisServer) -> Replica {
    let registry = Registry::new();
    let config = CacheConfig {
        redis: Some(CacheRedisConfig::new(redis.url())),
        ..CacheConfig::default()
    };
    let cache = CacheHandle::new(config, engine.clone(), &registry).unwrap();
    Replica { cache, registry }
}

impl Replica {
    async fn store(&self, prompt: &str, answer: &str, ttl_seconds: u32) {
        let command = StoreCommand::new(
            "tenant-a".into(),
            "llama".into(),
            prompt.into(),
            answer.into(),
            ttl_seconds,
            &CacheConfig::default(),
        )
        .unwrap();
        tokio::time::timeout(PROMPT, self.cache.store(command))
            .await
            .expect("a store never waits on Redis")
            .unwrap();
    }

    async fn lookup(&self, prompt: &str) -> Option<Hit> {
        let query = LookupQuery::new(
            "tenant-a".into(),
            "llama".into(),
            prompt.into(),
            0.0,
            &CacheConfig::default(),
        )
        .unwrap();
        tokio::time::timeout(PROMPT, self.cache.lookup(query))
            .await
            .expect("a lookup never waits on Redis")
            .unwrap()
    }

    /// Polls until `prompt` hits.
    async fn finds(&self, prompt: &str) -> Hit {
        eventually(&format!("a hit for {prompt:?}"), || async {
            self.lookup(prompt).await
        })
        .await
    }

    /// `passerelle_semantic_cache_redis_entries_total{result}`.
    fn entries(&self, result: &str) -> u64 {
        let text = passerelle_telemetry::metrics::encode_text(&self.registry);
        let prefix =
            format!("passerelle_semantic_cache_redis_entries_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    }

    /// Polls until `entries(result)` reaches `count`, then checks it went no further.
    async fn counted(&self, result: &str, count: u64) {
        eventually(&format!("{count} entries {result}"), || async {
            (self.entries(result) >= count).then_some(())
        })
        .await;
        assert_eq!(self.entries(result), count, "{result}");
    }
}

/// Polls `probe` until it gives a value, for at most [`PATIENCE`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_on_one_replica_finds_what_another_stored() {
    let redis = RedisServer::start().unwrap();
    let engine = engine(config(minilm_dir())).await;
    let a = replica(&engine, &redis);
    let b = replica(&engine, &redis);
    a.store(ASKED, ANSWER, 0).await;

    let hit = b.finds(PARAPHRASE).await;
    assert_eq!(&*hit.response_json, ANSWER);
    assert!(
        hit.similarity > 0.98 && hit.similarity < 1.0,
        "{}",
        hit.similarity
    );
    assert_eq!(b.lookup(ASKED).await.unwrap().similarity, 1.0);
    // The other replica's entry is stored once, and a replica never re-applies its own. (The
    // counters move just after the entries become visible, hence the polling.)
    b.counted("applied", 1).await;
    assert_eq!(b.cache.len(), 1);
    assert_eq!((a.entries("written"), a.entries("applied")), (1, 0));
    assert_eq!(a.cache.len(), 1);
    assert_eq!(
        (a.cache.redis_healthy(), b.cache.redis_healthy()),
        (Some(true), Some(true))
    );

    // And the other way round, while both are running.
    b.store("What is the capital of France?", r#"{"a":"Paris"}"#, 0)
        .await;
    let hit = a.finds("What's the capital of France?").await;
    assert_eq!(&*hit.response_json, r#"{"a":"Paris"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_the_store_replays_it() {
    let redis = RedisServer::start().unwrap();
    let engine = engine(config(minilm_dir())).await;
    let first = replica(&engine, &redis);
    first.store(ASKED, ANSWER, 0).await;
    first.counted("written", 1).await;
    drop(first);

    let restarted = replica(&engine, &redis);
    let hit = restarted.finds(PARAPHRASE).await;
    assert_eq!(&*hit.response_json, ANSWER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_not_replayed() {
    let redis = RedisServer::start().unwrap();
    let engine = engine(config(minilm_dir())).await;
    let first = replica(&engine, &redis);
    first
        .store("Who wrote Les Misérables?", r#"{"a":"Hugo"}"#, 1)
        .await;
    // Its clock started before the store returned.
    let stored = Instant::now();
    first.store(ASKED, ANSWER, 0).await;
    first.counted("written", 2).await;
    drop(first);
    // The one-second entry's lifetime has to pass: there is nothing to poll for.
    tokio::time::sleep(
        (stored + Duration::from_millis(1100)).saturating_duration_since(Instant::now()),
    )
    .await;

    let later = replica(&engine, &redis);
    // Entries are read in order: once the second is in, the first has been read too.
    later.finds(ASKED).await;
    assert_eq!(later.lookup("Who wrote Les Misérables?").await, None);
    later.counted("applied", 1).await;
    later.counted("expired", 1).await;
    assert_eq!(later.cache.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_cache_keeps_working_locally_and_catches_up_after() {
    let mut redis = RedisServer::start().unwrap();
    let engine = engine(config(minilm_dir())).await;
    let a = replica(&engine, &redis);
    let b = replica(&engine, &redis);
    a.store(ASKED, ANSWER, 0).await;
    b.finds(ASKED).await;

    redis.stop();
    a.store("What is the capital of France?", r#"{"a":"Paris"}"#, 0)
        .await;
    assert_eq!(
        &*a.lookup("What's the capital of France?")
            .await
            .unwrap()
            .response_json,
        r#"{"a":"Paris"}"#
    );
    assert!(a.lookup(PARAPHRASE).await.is_some());
    assert!(b.lookup(PARAPHRASE).await.is_some());
    for replica in [&a, &b] {
        eventually("Redis reported down", || async {
            (replica.cache.redis_healthy() == Some(false)).then_some(())
        })
        .await;
    }
    let metrics = passerelle_telemetry::metrics::encode_text(&a.registry);
    assert!(
        metrics.contains("passerelle_semantic_cache_redis_up 0"),
        "{metrics}"
    );

    redis.restart().unwrap();
    a.store("Who wrote Les Misérables?", r#"{"a":"Hugo"}"#, 0)
        .await;
    let hit = b.finds("Who wrote Les Misérables?").await;
    assert_eq!(&*hit.response_json, r#"{"a":"Hugo"}"#);
    eventually("Redis reported up", || async {
        (a.cache.redis_healthy() == Some(true)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_bad_redis_url_is_refused_at_start() {
    let engine = engine(config(minilm_dir())).await;
    let config = CacheConfig {
        redis: Some(CacheRedisConfig::new("not a url")),
        ..CacheConfig::default()
    };
    let err = CacheHandle::new(config, engine, &Registry::new()).unwrap_err();
    assert!(matches!(err, EmbeddingsError::CacheRedis(_)), "{err:?}");
}

/// Two whole services, as two replicas would run them, over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_redis_share_answers_over_grpc() {
    let redis = RedisServer::start().unwrap();
    let mut stops = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let config = EmbeddingsServiceConfig {
            model_path: minilm_dir().to_path_buf(),
            model_id: MODEL_ID.to_owned(),
            threads: Some(2),
            cache: CacheConfig {
                redis: Some(CacheRedisConfig::new(redis.url())),
                ..CacheConfig::default()
            },
            ..EmbeddingsServiceConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(passerelle_embeddings::serve(
            config,
            listener,
            Registry::new(),
            async {
                let _ = stopped.await;
            },
        ));
        stops.push((stop, task));
        clients.push(EmbeddingsClient::connect(endpoint).await.unwrap());
    }
    let answer = r#"{"id":"chatcmpl-1","choices":[]}"#;
    // The store answers UNAVAILABLE while the model loads.
    eventually("a store once the model is loaded", || {
        let mut client = clients[0].clone();
        async move {
            client
                .cache_store(CacheStoreRequest {
                    namespace: "tenant-a/abc123".to_owned(),
                    model: "llama".to_owned(),
                    prompt: ASKED.to_owned(),
                    response_json: answer.to_owned(),
                    ttl_seconds: 60,
                })
                .await
                .ok()
        }
    })
    .await;
    let hit = eventually("a hit on the other service", || {
        let mut client = clients[1].clone();
        async move {
            let found = client
                .cache_lookup(CacheLookupRequest {
                    namespace: "tenant-a/abc123".to_owned(),
                    model: "llama".to_owned(),
                    prompt: PARAPHRASE.to_owned(),
                    min_similarity: 0.0,
                })
                .await
                .ok()?
                .into_inner();
            found.hit.then_some(found)
        }
    })
    .await;
    assert_eq!(hit.response_json, answer);
    for (stop, task) in stops {
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
