//! Loading: a directory missing any file fails with an error naming it; checkpoints with a
//! `bert.` prefix load to the same model; weights that hold no BERT encoder are refused clearly.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{LinkedModel, config, engine, minilm_dir, try_engine};
use passerelle_embeddings::{EmbedOptions, EmbeddingsError, EngineState};

async fn load_error(dir: &std::path::Path) -> String {
    match try_engine(config(dir)).await {
        Err(EmbeddingsError::LoadFailed(message)) => message,
        Err(other) => panic!("expected LoadFailed, got {other:?}"),
        Ok(_) => panic!("{} should not load", dir.display()),
    }
}

#[tokio::test]
async fn a_missing_file_is_named_in_the_load_error() {
    for missing in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "1_Pooling/config.json",
    ] {
        let model = LinkedModel::new(&["mean"], true, &[missing]);
        let message = load_error(model.path()).await;
        assert!(
            message.contains(&format!("lacks {missing}")),
            "{missing}: {message}"
        );
    }
    let model = LinkedModel::new(&["mean"], true, &["modules.json"]);
    let message = load_error(model.path()).await;
    assert!(
        message.contains("not a sentence-transformers model directory: it lacks modules.json"),
        "{message}"
    );
    let message = load_error(&minilm_dir().join("no-such-model")).await;
    assert!(message.contains("not a directory"), "{message}");
}

#[tokio::test]
async fn a_failed_load_is_reported_and_requests_are_unavailable() {
    let model = LinkedModel::new(&["mean"], true, &["tokenizer.json"]);
    let handle = passerelle_embeddings::EmbeddingEngine::spawn(
        config(model.path()),
        &prometheus::Registry::new(),
    )
    .unwrap();
    assert!(handle.ready().await.is_err());
    assert!(matches!(handle.state(), EngineState::Failed(m) if m.contains("tokenizer.json")));
    let err = handle
        .embed(vec!["hello".to_owned()], EmbedOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, EmbeddingsError::LoadFailed(_)), "{err:?}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
}

/// MiniLM's weights renamed under `prefix`, beside links to its other files.
fn prefixed_copy(prefix: &str) -> LinkedModel {
    let model = LinkedModel::new(&["mean"], true, &["model.safetensors"]);
    let tensors =
        candle_core::safetensors::load(minilm_dir().join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, tensor)| (format!("{prefix}{name}"), tensor))
        .collect();
    candle_core::safetensors::save(&renamed, model.path().join("model.safetensors")).unwrap();
    model
}

#[tokio::test]
async fn bert_prefixed_checkpoints_load_to_the_same_model() {
    let text = vec!["Prefixes are a property of how a checkpoint was saved.".to_owned()];
    let reference = engine(config(minilm_dir()))
        .await
        .embed(text.clone(), EmbedOptions::default())
        .await
        .unwrap();
    let prefixed = prefixed_copy("bert.");
    let embedded = engine(config(prefixed.path()))
        .await
        .embed(text, EmbedOptions::default())
        .await
        .unwrap();
    assert_eq!(embedded.vectors, reference.vectors);
}

#[tokio::test]
async fn weights_without_a_bert_encoder_are_refused() {
    let other = prefixed_copy("roberta.");
    let message = load_error(other.path()).await;
    assert!(
        message.contains("no BERT encoder in the weights"),
        "{message}"
    );
    assert!(
        message.contains("`bert.embeddings.word_embeddings.weight`"),
        "{message}"
    );
}
