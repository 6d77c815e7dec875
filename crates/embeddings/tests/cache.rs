//! The semantic cache on the real all-MiniLM-L6-v2: paraphrases hit, other questions and other
//! namespaces miss, exact matches answer without the model, long prompts only match exactly.
//!
//! Similarities measured with this model (cosine of the normalised mean-pooled vectors):
//! "How do I reset my password?" vs "How can I reset my password?" 0.992, vs "How do I change
//! my password?" 0.874, vs "How do I reset my router?" 0.530.

mod common;

use common::{config, engine, minilm_dir};
use passerelle_embeddings::{
    CacheConfig, EmbeddingHandle,
    cache::{
        CacheHandle,
        request::{LookupQuery, StoreCommand},
    },
};
use prometheus::Registry;

const ASKED: &str = "How do I reset my password?";
const ANSWER: &str = r#"{"choices":[{"message":{"content":"Settings > Security > Reset"}}]}"#;

fn cache(engine: &EmbeddingHandle) -> (CacheHandle, Registry) {
    let registry = Registry::new();
    let cache = CacheHandle::new(CacheConfig::default(), engine.clone(), &registry).unwrap();
    (cache, registry)
}

fn store(namespace: &str, prompt: &str, answer: &str) -> StoreCommand {
    StoreCommand::new(
        namespace.into(),
        "llama".into(),
        prompt.into(),
        answer.into(),
        0,
        &CacheConfig::default(),
    )
    .unwrap()
}

fn lookup(namespace: &str, prompt: &str, min_similarity: f32) -> LookupQuery {
    LookupQuery::new(
        namespace.into(),
        "llama".into(),
        prompt.into(),
        min_similarity,
        &CacheConfig::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn paraphrases_hit_and_other_questions_miss() {
    let engine = engine(config(minilm_dir())).await;
    let (cache, registry) = cache(&engine);
    let id = cache.store(store("tenant-a", ASKED, ANSWER)).await.unwrap();
    cache
        .store(store(
            "tenant-a",
            "What is the capital of France?",
            "{\"a\":\"Paris\"}",
        ))
        .await
        .unwrap();

    let hit = cache
        .lookup(lookup("tenant-a", "How can I reset my password?", 0.0))
        .await
        .unwrap()
        .expect("a paraphrase hits at the default 0.95");
    assert_eq!(hit.id, id);
    assert_eq!(&*hit.response_json, ANSWER);
    assert!(
        hit.similarity > 0.98 && hit.similarity < 1.0,
        "{}",
        hit.similarity
    );

    // A related but different question: below the default, above a lax threshold.
    assert_eq!(
        cache
            .lookup(lookup("tenant-a", "How do I change my password?", 0.0))
            .await
            .unwrap(),
        None
    );
    let lax = cache
        .lookup(lookup("tenant-a", "How do I change my password?", 0.85))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lax.id, id);
    assert_eq!(
        cache
            .lookup(lookup("tenant-a", "How do I reset my router?", 0.0))
            .await
            .unwrap(),
        None
    );
    // The same words in another tenant's namespace, or for another model: nothing.
    assert_eq!(
        cache.lookup(lookup("tenant-b", ASKED, 0.0)).await.unwrap(),
        None
    );
    let other_model = LookupQuery::new(
        "tenant-a".into(),
        "mistral".into(),
        ASKED.into(),
        0.0,
        &CacheConfig::default(),
    )
    .unwrap();
    assert_eq!(cache.lookup(other_model).await.unwrap(), None);

    let metrics = passerelle_telemetry::metrics::encode_text(&registry);
    for line in [
        r#"passerelle_semantic_cache_lookups_total{result="hit_semantic"} 2"#,
        r#"passerelle_semantic_cache_lookups_total{result="miss"} 4"#,
        r#"passerelle_semantic_cache_lookups_total{result="hit_exact"} 0"#,
        "passerelle_semantic_cache_entries 2",
        // Four lookups found a candidate; the other namespace and model had none.
        "passerelle_semantic_cache_similarity_count 4",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn an_exact_match_answers_with_1_without_running_the_model() {
    let engine = engine(config(minilm_dir())).await;
    let (cache, registry) = cache(&engine);
    let id = cache.store(store("t", ASKED, ANSWER)).await.unwrap();
    let embedded = engine.stats().requests_ok;
    let hit = cache
        .lookup(lookup("t", "  How do I   reset my password?\n", 1.0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((hit.id, hit.similarity), (id, 1.0));
    assert_eq!(
        engine.stats().requests_ok,
        embedded,
        "no embedding computed"
    );
    // Case is kept by the exact key, so this one goes to the model; MiniLM is uncased and
    // embeds it the same, so it still hits, by meaning.
    let semantic = cache
        .lookup(lookup("t", "how do i reset my password?", 1.0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(semantic.id, id);
    assert_eq!(engine.stats().requests_ok, embedded + 1);
    let metrics = passerelle_telemetry::metrics::encode_text(&registry);
    assert!(
        metrics.contains(r#"passerelle_semantic_cache_lookups_total{result="hit_exact"} 1"#)
            && metrics
                .contains(r#"passerelle_semantic_cache_lookups_total{result="hit_semantic"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn prompts_longer_than_the_model_reads_match_only_exactly() {
    let engine = engine(config(minilm_dir())).await;
    let (cache, _registry) = cache(&engine);
    // Past 256 tokens MiniLM stops reading: these two differ only where it no longer looks.
    let head = "please summarise the following report carefully ".repeat(60);
    let first = format!("{head} and end with the word apple");
    let second = format!("{head} and end with the word banana");
    let id = cache.store(store("t", &first, ANSWER)).await.unwrap();
    assert_eq!(cache.lookup(lookup("t", &second, 0.5)).await.unwrap(), None);
    assert_eq!(
        cache
            .lookup(lookup("t", &first, 0.5))
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
}

#[tokio::test]
async fn a_full_cache_evicts_the_least_recently_used_and_counts_it() {
    let engine = engine(config(minilm_dir())).await;
    let registry = Registry::new();
    let config = CacheConfig {
        max_entries: 2,
        ..CacheConfig::default()
    };
    let cache = CacheHandle::new(config, engine.clone(), &registry).unwrap();
    cache.store(store("t", ASKED, "1")).await.unwrap();
    cache
        .store(store("t", "What is the capital of France?", "2"))
        .await
        .unwrap();
    // Hitting the password entry leaves France as the least recently used.
    assert!(
        cache
            .lookup(lookup("t", ASKED, 0.0))
            .await
            .unwrap()
            .is_some()
    );
    cache
        .store(store("t", "Who wrote Les Misérables?", "3"))
        .await
        .unwrap();
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache
            .lookup(lookup("t", "What is the capital of France?", 0.0))
            .await
            .unwrap(),
        None
    );
    assert!(
        cache
            .lookup(lookup("t", ASKED, 0.0))
            .await
            .unwrap()
            .is_some()
    );
    let metrics = passerelle_telemetry::metrics::encode_text(&registry);
    for line in [
        r#"passerelle_semantic_cache_evictions_total{reason="capacity"} 1"#,
        r#"passerelle_semantic_cache_evictions_total{reason="ttl"} 0"#,
        "passerelle_semantic_cache_entries 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}
