//! The operator API end to end: keys created, used and revoked over HTTP, the audit log, and
//! erasure of a principal's data, all behind the `admin` scope.

use std::collections::BTreeSet;
use std::time::Duration;

use passerelle_store::{
    AuditAction, AuditLog as _, FeedbackRecord, FeedbackStore as _, KeyStore as _, NewAuditEvent,
    NewKey, PromptLog as _, PromptRecord, Rating, Scope, pseudonym,
};
use passerelle_testkit::stack::Stack;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served};

fn chat() -> Value {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
}

/// Sends `method path` with `token` (and `body` as JSON), returning the status and the JSON
/// answer.
async fn call(
    served: &Served,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, served.stack.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}

async fn admin(
    served: &Served,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    call(served, method, path, Stack::API_KEY, body).await
}

/// Polls the audit log until `found` holds for its events (they are written behind the
/// request), returning them.
async fn audit_until(served: &Served, found: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = admin(served, Method::GET, "/admin/audit?limit=1000", None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["data"].as_array().expect("data").clone();
        if found(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit log never matched: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn has_event(events: &[Value], action: &str, target: &str) -> bool {
    events
        .iter()
        .any(|e| e["action"] == action && e["target"] == target)
}

#[tokio::test]
async fn keys_are_created_used_listed_and_revoked_over_http() {
    let served = Served::start(Format::Gguf).await;
    let (status, created) = admin(
        &served,
        Method::POST,
        "/admin/keys",
        Some(&json!({
            "name": "laptop", "owner": "alice", "scopes": ["chat"], "models": [MODEL_ID],
            "expires_in_secs": 3600, "rpm": 100, "budget": {"usd": 2.5, "period": "monthly"}
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["key"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("psk-") && secret.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["object"], "api_key");
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["status"], "active");
    assert_eq!(created["scopes"], json!(["chat"]));
    assert_eq!(created["models"], json!([MODEL_ID]));
    assert_eq!(created["limits"]["rpm"], 100);
    assert_eq!(created["limits"]["budget"]["limit_micro_usd"], 2_500_000);
    assert!(created["expires_at"].as_u64().unwrap() > created["created_at"].as_u64().unwrap());

    let (status, answer) = call(
        &served,
        Method::POST,
        "/v1/chat/completions",
        &secret,
        Some(&chat()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, listed) = admin(&served, Method::GET, "/admin/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["id"], id.as_str());
    let (_, mine) = admin(&served, Method::GET, "/admin/keys?owner=alice", None).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    let (_, others) = admin(&served, Method::GET, "/admin/keys?owner=bob", None).await;
    assert_eq!(others["data"], json!([]));

    let (status, shown) = admin(&served, Method::GET, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["id"], id.as_str());
    for body in [&listed, &shown] {
        let text = body.to_string();
        assert!(!text.contains(&secret[12..]), "secret leaked: {text}");
        assert!(
            !text.contains("sha256") && !text.contains("\"key\""),
            "{text}"
        );
    }

    let (status, missing) = admin(&served, Method::GET, "/admin/keys/no-such-key", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"]["code"], "key_not_found");
    assert_eq!(missing["error"]["param"], "id");
    let (status, _) = admin(&served, Method::DELETE, "/admin/keys/no-such-key", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, revoked) =
        admin(&served, Method::DELETE, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked.get("key").is_none());
    let (status, again) = admin(&served, Method::DELETE, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "revoking twice is idempotent");
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);

    let (status, refused) = call(
        &served,
        Method::POST,
        "/v1/chat/completions",
        &secret,
        Some(&chat()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["error"]["code"], "invalid_api_key");

    let events = audit_until(&served, |events| {
        has_event(events, "key_created", &id) && has_event(events, "key_revoked", &id)
    })
    .await;
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"] == id.as_str())
        .collect();
    assert_eq!(
        ours.len(),
        2,
        "one event per change, none for the repeated revoke: {ours:#?}"
    );
    for event in ours {
        assert_eq!(event["actor"], "static");
        assert_eq!(event["client_addr"], "127.0.0.1");
        assert!(!event.to_string().contains("alice"), "{event}");
    }
}

#[tokio::test]
async fn admin_routes_refuse_keys_without_the_admin_scope() {
    let served = Served::start(Format::Gguf).await;
    let (_, user) = served
        .stack
        .store()
        .create(NewKey::new("user", "mallory"))
        .await
        .unwrap();
    let body = json!({"name": "sneaky", "scopes": ["admin"]});
    let routes = [
        (Method::POST, "/admin/keys", Some(&body)),
        (Method::GET, "/admin/keys", None),
        (Method::GET, "/admin/keys/some-id", None),
        (Method::DELETE, "/admin/keys/some-id", None),
        (Method::GET, "/admin/audit", None),
        (Method::DELETE, "/v1/users/alice/data", None),
    ];
    for (method, path, body) in routes {
        let (status, refused) = call(&served, method.clone(), path, user.expose(), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {refused}");
        assert_eq!(refused["error"]["code"], "insufficient_scope");
    }
    assert!(
        served.stack.store().list().await.unwrap().len() == 1,
        "no key was created"
    );
    let (status, _) = call(&served, Method::GET, "/admin/keys", "psk-wrong", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn erasure_removes_a_principals_data_and_pseudonymizes_its_audit_entries() {
    let served = Served::start(Format::Gguf).await;
    let store = served.stack.store();
    for (response_id, principal) in [("r1", "erin"), ("r2", "erin"), ("r3", "frank")] {
        store
            .record_prompt(&PromptRecord {
                response_id: response_id.into(),
                principal: principal.into(),
                at: 1,
                prompt: "p".into(),
                completion: "c".into(),
            })
            .await
            .unwrap();
    }
    for principal in ["erin", "frank"] {
        store
            .record_feedback(&FeedbackRecord {
                response_id: "r1".into(),
                principal: principal.into(),
                rating: Rating::Up,
                comment: Some("nice".into()),
                at: 1,
            })
            .await
            .unwrap();
    }
    store
        .append_audit(NewAuditEvent::now("erin", AuditAction::DataExported))
        .await
        .unwrap();
    let mut new = NewKey::new("erin's key", "erin");
    new.scopes = BTreeSet::from([Scope::Chat]);
    let (_, erin_key) = store.create(new).await.unwrap();
    // Refused, and audited as erin through the write-behind queue, which the erasure waits for.
    let (status, _) = call(
        &served,
        Method::GET,
        "/admin/audit",
        erin_key.expose(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, report) = admin(
        &served,
        Method::DELETE,
        "/v1/users/erin/data?revoke_keys=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let alias = pseudonym("erin");
    assert_eq!(
        report,
        json!({"object": "user.data.erased", "pseudonym": alias, "prompts_removed": 2,
               "feedback_removed": 1, "audit_entries_anonymized": 2, "keys_revoked": 1})
    );

    assert!(store.prompts_of("erin").await.unwrap().is_empty());
    assert_eq!(store.prompts_of("frank").await.unwrap().len(), 1);
    assert_eq!(
        store.feedback_counts(0).await.unwrap().up,
        1,
        "frank's stays"
    );
    let (status, _) = call(
        &served,
        Method::POST,
        "/v1/chat/completions",
        erin_key.expose(),
        Some(&chat()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let events = audit_until(&served, |events| has_event(events, "data_erased", &alias)).await;
    let erased = events
        .iter()
        .find(|e| e["action"] == "data_erased")
        .unwrap();
    assert_eq!(erased["actor"], "static");
    assert_eq!(erased["client_addr"], "127.0.0.1");
    for event in &events {
        assert_ne!(event["actor"], "erin", "{event}");
        assert_ne!(event["target"], "erin", "{event}");
    }
    let as_alias = events
        .iter()
        .filter(|e| e["actor"] == alias.as_str())
        .count();
    assert_eq!(as_alias, 2, "{events:#?}");

    let (_, again) = admin(&served, Method::DELETE, "/v1/users/erin/data", None).await;
    assert_eq!(again["prompts_removed"], 0);
    assert_eq!(again["audit_entries_anonymized"], 0);
}

#[tokio::test]
async fn admin_input_errors_name_their_param() {
    let served = Served::start(Format::Gguf).await;
    let bad_keys = [
        (json!({"name": ""}), "name"),
        (
            json!({"name": "n", "scopes": ["chat", "root"]}),
            "scopes[1]",
        ),
        (
            json!({"name": "n", "budget": {"usd": -5, "period": "daily"}}),
            "budget.usd",
        ),
        (
            json!({"name": "n", "expires_at": 2_000_000_000u64, "expires_in_secs": 60}),
            "expires_in_secs",
        ),
        (json!({"name": "n", "rpm": 0}), "rpm"),
        (json!({"name": "n", "limit": 5}), "limit"),
    ];
    for (body, param) in bad_keys {
        let (status, error) = admin(&served, Method::POST, "/admin/keys", Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    assert!(served.stack.store().list().await.unwrap().is_empty());

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("since_id=x", "since_id"),
    ] {
        let (status, error) =
            admin(&served, Method::GET, &format!("/admin/audit?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error["error"]["param"], param);
    }
    let (status, page) = admin(&served, Method::GET, "/admin/audit?limit=1000", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page["next_since_id"].is_u64());

    let (status, error) = admin(&served, Method::DELETE, "/v1/users/%20/data", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["param"], "id");
    let (status, error) = admin(
        &served,
        Method::DELETE,
        "/v1/users/erin/data?revoke_keys=maybe",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["param"], "revoke_keys");
}
