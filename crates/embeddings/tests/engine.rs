//! The engine driven directly on the real all-MiniLM-L6-v2 weights: batching, normalisation,
//! `dimensions`, request limits and counters.

mod common;

use common::{LinkedModel, config, engine, fixture, max_abs_diff, minilm_dir, texts};
use passerelle_embeddings::{EmbedOptions, EmbeddingsError, MAX_INPUTS, vector};

/// Different batch shapes change the order of float additions in the matrix products, nothing
/// else: vectors agree far below the parity tolerance.
const SAME: f32 = 1e-5;

fn param(err: EmbeddingsError) -> String {
    match err {
        EmbeddingsError::InvalidArgument { param, .. } => param,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test]
async fn batching_gives_the_vectors_of_one_by_one() {
    let inputs = texts(&fixture().cases);
    let engine = engine(config(minilm_dir())).await;
    let together = engine
        .embed(inputs.clone(), EmbedOptions::default())
        .await
        .unwrap();
    let mut small_batches = config(minilm_dir());
    small_batches.max_batch = 3;
    let small = common::engine(small_batches).await;
    let in_threes = small
        .embed(inputs.clone(), EmbedOptions::default())
        .await
        .unwrap();
    for (index, text) in inputs.iter().enumerate() {
        let alone = engine
            .embed(vec![text.clone()], EmbedOptions::default())
            .await
            .unwrap();
        let diff = max_abs_diff(&alone.vectors[0], &together.vectors[index]);
        assert!(diff <= SAME, "{text:?}: padding leaked ({diff})");
        let diff = max_abs_diff(&alone.vectors[0], &in_threes.vectors[index]);
        assert!(diff <= SAME, "{text:?}: batch grouping changed it ({diff})");
        assert_eq!(alone.tokens[0], together.tokens[index]);
    }
}

#[tokio::test]
async fn concurrent_requests_share_passes_but_keep_their_own_vectors() {
    let inputs = texts(&fixture().cases);
    let engine = engine(config(minilm_dir())).await;
    let mut expected = Vec::new();
    for text in &inputs {
        let alone = engine
            .embed(vec![text.clone()], EmbedOptions::default())
            .await
            .unwrap();
        expected.push(alone.vectors[0].clone());
    }
    // Requests of one and two texts, all queued at once.
    let requests: Vec<Vec<String>> = inputs.chunks(2).map(<[String]>::to_vec).collect();
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .map(|texts| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.embed(texts, EmbedOptions::default()).await })
        })
        .collect();
    let mut index = 0;
    for task in tasks {
        let embedded = task.await.unwrap().unwrap();
        for vector in &embedded.vectors {
            let diff = max_abs_diff(vector, &expected[index]);
            assert!(
                diff <= SAME,
                "input {index} came back as another's ({diff})"
            );
            index += 1;
        }
    }
    assert_eq!(index, inputs.len());
    let stats = engine.stats();
    assert_eq!(stats.requests_ok as usize, inputs.len() + requests.len());
    assert_eq!(stats.inputs as usize, 2 * inputs.len());
    assert_eq!(stats.queue_depth, 0);
}

#[tokio::test]
async fn vectors_are_unit_length_when_the_model_or_the_request_says_so() {
    let inputs = texts(&fixture().cases);
    let normalizing = engine(config(minilm_dir())).await;
    for options in [
        EmbedOptions::default(),
        EmbedOptions {
            normalize: true,
            dimensions: None,
        },
    ] {
        let embedded = normalizing.embed(inputs.clone(), options).await.unwrap();
        for vector in &embedded.vectors {
            assert!((vector::norm(vector) - 1.0).abs() < 1e-5);
        }
    }

    let raw_model = LinkedModel::new(&["mean"], false, &[]);
    let raw = engine(config(raw_model.path())).await;
    assert!(!raw.ready().await.unwrap().spec.normalized);
    let unnormalized = raw
        .embed(inputs.clone(), EmbedOptions::default())
        .await
        .unwrap();
    assert!(
        unnormalized
            .vectors
            .iter()
            .any(|v| (vector::norm(v) - 1.0).abs() > 1e-2)
    );
    let normalized = raw
        .embed(
            inputs,
            EmbedOptions {
                normalize: true,
                dimensions: None,
            },
        )
        .await
        .unwrap();
    let reference = normalizing
        .embed(
            vec![fixture().cases[2].text.clone()],
            EmbedOptions::default(),
        )
        .await
        .unwrap();
    // Mean pooling then normalising on request is exactly the model's own pipeline.
    assert!(max_abs_diff(&normalized.vectors[2], &reference.vectors[0]) <= SAME);
    for vector in &normalized.vectors {
        assert!((vector::norm(vector) - 1.0).abs() < 1e-5);
    }
}

#[tokio::test]
async fn dimensions_shorten_only_matryoshka_models() {
    let text = vec!["Matryoshka dolls nest inside each other.".to_owned()];
    let plain = engine(config(minilm_dir())).await;
    let full = plain
        .embed(text.clone(), EmbedOptions::default())
        .await
        .unwrap();
    let native = plain
        .embed(
            text.clone(),
            EmbedOptions {
                normalize: true,
                dimensions: Some(384),
            },
        )
        .await
        .unwrap();
    assert_eq!(native.vectors, full.vectors);
    let err = plain
        .embed(
            text.clone(),
            EmbedOptions {
                normalize: true,
                dimensions: Some(128),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a Matryoshka model"), "{err}");
    assert_eq!(param(err), "dimensions");

    let mut declared = config(minilm_dir());
    declared.matryoshka = true;
    let matryoshka = engine(declared).await;
    let short = matryoshka
        .embed(
            text.clone(),
            EmbedOptions {
                normalize: true,
                dimensions: Some(128),
            },
        )
        .await
        .unwrap();
    assert_eq!(short.vectors[0].len(), 128);
    assert!((vector::norm(&short.vectors[0]) - 1.0).abs() < 1e-5);
    let mut prefix = full.vectors[0][..128].to_vec();
    vector::l2_normalize(&mut prefix);
    assert!(max_abs_diff(&short.vectors[0], &prefix) <= 1e-6);
    let err = matryoshka
        .embed(
            text,
            EmbedOptions {
                normalize: true,
                dimensions: Some(385),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(param(err), "dimensions");
}

#[tokio::test]
async fn request_limits_are_invalid_arguments() {
    let engine = engine(config(minilm_dir())).await;
    let none = EmbedOptions::default();
    assert_eq!(
        param(engine.embed(Vec::new(), none).await.unwrap_err()),
        "input"
    );
    let err = engine
        .embed(vec!["fine".to_owned(), String::new()], none)
        .await
        .unwrap_err();
    assert_eq!(param(err), "input[1]");
    let too_many = vec!["x".to_owned(); MAX_INPUTS + 1];
    let err = engine.embed(too_many, none).await.unwrap_err();
    assert!(err.to_string().contains("at most 2048"), "{err}");
    // Whitespace is text: the model sees [CLS] [SEP].
    let blank = engine.embed(vec!["   ".to_owned()], none).await.unwrap();
    assert_eq!(blank.tokens, vec![2]);
    let stats = engine.stats();
    assert_eq!(stats.requests_invalid, 3);
    assert_eq!(stats.requests_ok, 1);
    assert_eq!(stats.inputs, 1);
    assert_eq!(stats.tokens, 2);
}

#[tokio::test]
async fn the_largest_request_runs_in_passes_of_max_batch() {
    let engine = engine(config(minilm_dir())).await;
    let texts: Vec<String> = (0..MAX_INPUTS).map(|i| format!("sentence {i}")).collect();
    let embedded = engine.embed(texts, EmbedOptions::default()).await.unwrap();
    assert_eq!(embedded.vectors.len(), MAX_INPUTS);
    assert_eq!(engine.stats().batches, (MAX_INPUTS / 32) as u64);
}
