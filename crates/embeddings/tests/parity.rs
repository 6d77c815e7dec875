//! Parity with sentence-transformers: all-MiniLM-L6-v2's vectors for a dozen varied sentences
//! (short, long past the truncation limit, non-ASCII, code, odd whitespace) match the ones
//! `fixtures/make_minilm_parity.py` recorded, within 1e-4 per component; so do the same encoder's
//! vectors under other pooling pipelines.

mod common;

use common::{LinkedModel, config, engine, fixture, max_abs_diff, minilm_dir, texts};
use passerelle_embeddings::EmbedOptions;

const TOLERANCE: f32 = 1e-4;

#[tokio::test]
async fn minilm_matches_sentence_transformers() {
    let fixture = fixture();
    let engine = engine(config(minilm_dir())).await;
    let served = engine.ready().await.unwrap();
    assert_eq!(served.spec.dimension, fixture.dimension);
    assert_eq!(served.spec.max_seq_length, fixture.max_seq_length);
    assert!(served.spec.normalized);

    let embedded = engine
        .embed(texts(&fixture.cases), EmbedOptions::default())
        .await
        .unwrap();
    let mut worst = 0f32;
    for (index, case) in fixture.cases.iter().enumerate() {
        let diff = max_abs_diff(&embedded.vectors[index], &case.embedding);
        worst = worst.max(diff);
        assert!(
            diff <= TOLERANCE,
            "input {index} ({:?}): max abs diff {diff} > {TOLERANCE} (fixture made from weights \
             sha256 {})",
            case.text,
            fixture.weights_sha256,
        );
        assert_eq!(
            embedded.tokens[index], case.tokens,
            "tokens of {:?}",
            case.text
        );
        // Only the input longer than max_seq_length lost its tail.
        assert_eq!(
            embedded.truncated[index],
            case.tokens == fixture.max_seq_length,
            "{:?}",
            case.text
        );
    }
    eprintln!("all-MiniLM-L6-v2: largest difference from sentence-transformers {worst:e}");
    assert_eq!(
        embedded.total_tokens(),
        fixture.cases.iter().map(|c| c.tokens).sum::<usize>()
    );
}

#[tokio::test]
async fn other_pooling_pipelines_match_sentence_transformers() {
    let fixture = fixture();
    assert!(!fixture.variants.is_empty());
    for variant in &fixture.variants {
        let modes: Vec<&str> = variant.pooling_mode.iter().map(String::as_str).collect();
        let model = LinkedModel::new(&modes, variant.normalize, &[]);
        let engine = engine(config(model.path())).await;
        let embedded = engine
            .embed(texts(&variant.cases), EmbedOptions::default())
            .await
            .unwrap();
        let mut worst = 0f32;
        for (index, case) in variant.cases.iter().enumerate() {
            let diff = max_abs_diff(&embedded.vectors[index], &case.embedding);
            worst = worst.max(diff);
            assert!(
                diff <= TOLERANCE,
                "{}: input {index} ({:?}): max abs diff {diff}",
                variant.name,
                case.text
            );
        }
        eprintln!(
            "{}: largest difference from sentence-transformers {worst:e}",
            variant.name
        );
    }
}
