//! Access control end to end: scopes, JWTs and rate limits in front of real routes.

use std::collections::BTreeSet;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use passerelle_gateway::jwt::JwtConfig;
use passerelle_store::{KeyStore as _, NewKey, Scope};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served};

const JWT_SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";

fn completion() -> Value {
    json!({"model": MODEL_ID, "prompt": "Hello", "max_tokens": 1})
}

fn chat() -> Value {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
}

async fn post(served: &Served, path: &str, token: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(served.stack.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_outside_its_scopes_or_models_gets_403() {
    let served = Served::start(Format::Gguf).await;
    let mut new = NewKey::new("chat only", "alice");
    new.scopes = BTreeSet::from([Scope::Chat]);
    let (_, chat_only) = served.stack.store().create(new).await.unwrap();
    let mut new = NewKey::new("other model", "bob");
    new.models = Some(BTreeSet::from(["some-other-model".to_owned()]));
    let (_, other_model) = served.stack.store().create(new).await.unwrap();

    let allowed = post(&served, "/v1/chat/completions", chat_only.expose(), &chat()).await;
    assert_eq!(allowed.status(), StatusCode::OK);

    let refused = post(
        &served,
        "/v1/completions",
        chat_only.expose(),
        &completion(),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(body["error"]["code"], "insufficient_scope");

    let admin = reqwest::Client::new()
        .get(served.stack.url("/admin/drift"))
        .bearer_auth(chat_only.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::FORBIDDEN);

    let wrong_model = post(
        &served,
        "/v1/chat/completions",
        other_model.expose(),
        &chat(),
    )
    .await;
    assert_eq!(wrong_model.status(), StatusCode::FORBIDDEN);
    let body: Value = wrong_model.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert_eq!(body["error"]["param"], "model");
}

fn token(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    passerelle_store::unix_now()
}

#[tokio::test]
async fn jwts_are_verified() {
    let served = Served::start_with(Format::Gguf, |options| {
        options.gateway.jwt = Some(JwtConfig {
            hs256_secret: Some(JWT_SECRET.to_owned()),
            ..JwtConfig::default()
        });
    })
    .await;
    let valid = token(&json!({"sub": "carol", "exp": now() + 600}), JWT_SECRET);
    assert_eq!(
        post(&served, "/v1/chat/completions", &valid, &chat())
            .await
            .status(),
        StatusCode::OK
    );

    let expired = token(&json!({"sub": "carol", "exp": now() - 600}), JWT_SECRET);
    let wrong_key = token(
        &json!({"sub": "carol", "exp": now() + 600}),
        "another-secret-of-at-least-thirty-two-bytes",
    );
    // `alg: none`, unsigned.
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(json!({"sub": "carol", "exp": now() + 600}).to_string())
        )
    };
    for bad in [expired, wrong_key, none] {
        let response = post(&served, "/v1/chat/completions", &bad, &chat()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token");
    }

    let scoped = token(
        &json!({"sub": "dave", "exp": now() + 600, "scope": "embeddings"}),
        JWT_SECRET,
    );
    assert_eq!(
        post(&served, "/v1/chat/completions", &scoped, &chat())
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn rate_limits_refuse_with_retry_after_and_headers() {
    let served = Served::start_with(Format::Gguf, |options| {
        options.gateway.rate_limits.rpm = Some(2);
    })
    .await;
    let key = passerelle_testkit::stack::Stack::API_KEY;
    for remaining in ["1", "0"] {
        let response = post(&served, "/v1/chat/completions", key, &chat()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["x-ratelimit-limit-requests"], "2");
        assert_eq!(headers["x-ratelimit-remaining-requests"], remaining);
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
    }
    let refused = post(&served, "/v1/chat/completions", key, &chat()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}
