//! `passerelle keys create|list|revoke`: API keys in the embedded store, or in Redis with
//! `--redis-url`. Creating and revoking also append to the store's audit log (actor `cli`).

use std::sync::Arc;

use anyhow::Context as _;
use passerelle_store::{
    AuditAction, EmbeddedStore, KeyRecord, NewAuditEvent, RedisStore, Store, unix_now,
};

use crate::{
    args::{KeysAction, KeysArgs},
    config::{self, FileConfig},
};

/// The actor audit events from the command line name.
const CLI_ACTOR: &str = "cli";

pub async fn run(args: KeysArgs, file: &FileConfig) -> anyhow::Result<()> {
    let (store, location) = open(&args, file).await?;
    match args.action {
        KeysAction::Create(create) => {
            let (record, secret) = store.create(create.into_new_key(unix_now())).await?;
            audit(
                store.as_ref(),
                NewAuditEvent::now(CLI_ACTOR, AuditAction::KeyCreated)
                    .target(&record.id)
                    .detail(audit_detail(&record)),
            )
            .await;
            println!(
                "created key {} ({}) named {:?} for {:?}",
                record.id, record.prefix, record.name, record.owner
            );
            println!("{}", secret.expose());
            eprintln!("Store this secret now: it is shown only once and cannot be recovered.");
        }
        KeysAction::List => {
            let keys = store.list().await?;
            if keys.is_empty() {
                println!("no keys in {location}");
            }
            let now = unix_now();
            for key in keys {
                println!("{}", describe(&key, now));
            }
        }
        KeysAction::Revoke { key } => {
            let record = store.revoke(&key).await?;
            audit(
                store.as_ref(),
                NewAuditEvent::now(CLI_ACTOR, AuditAction::KeyRevoked).target(&record.id),
            )
            .await;
            println!("revoked {}", describe(&record, unix_now()));
        }
    }
    Ok(())
}

/// The store to manage and a description of where it is.
async fn open(args: &KeysArgs, file: &FileConfig) -> anyhow::Result<(Arc<dyn Store>, String)> {
    if let Some(url) = args.redis_url.clone().or_else(|| file.redis_url.clone()) {
        let store = RedisStore::connect(&url)
            .await
            .context("cannot reach the Redis key store")?;
        return Ok((Arc::new(store), "the Redis store".to_owned()));
    }
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(config::default_data_dir);
    let store = EmbeddedStore::open(&data_dir)
        .with_context(|| format!("cannot open the key store in {}", data_dir.display()))?;
    Ok((Arc::new(store), data_dir.display().to_string()))
}

/// The key change is done by now; a failed audit write is reported, not fatal, so that the
/// operator still sees the secret of a key that exists.
async fn audit(store: &dyn Store, event: NewAuditEvent) {
    if let Err(err) = store.append_audit(event).await {
        eprintln!("warning: the key changed but its audit record could not be written: {err}");
    }
}

/// Not the name or owner: erasure pseudonymizes an audit event's actor and target, not its
/// free text, so a principal's id written here would outlive its erasure. The same detail as the
/// gateway's `POST /admin/keys`.
fn audit_detail(record: &KeyRecord) -> String {
    let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
    format!("prefix={} scopes={}", record.prefix, scopes.join(","))
}

fn describe(key: &KeyRecord, now: u64) -> String {
    let state = match (key.revoked_at, key.expires_at) {
        (Some(at), _) => format!("revoked {}", time(at)),
        (None, Some(at)) if key.is_expired(now) => format!("expired {}", time(at)),
        (None, Some(at)) => format!("active, expires {}", time(at)),
        (None, None) => "active".to_owned(),
    };
    let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
    let models = match &key.models {
        Some(models) => models.iter().cloned().collect::<Vec<_>>().join(","),
        None => "all".to_owned(),
    };
    let mut line = format!(
        "{}  {}  {:<24}  owner {}  scopes {}  models {}  created {}  {}",
        key.id,
        key.prefix,
        key.name,
        key.owner,
        scopes.join(","),
        models,
        time(key.created_at),
        state
    );
    let limits = &key.limits;
    for (name, value) in [
        ("rpm", limits.rpm),
        ("tpm", limits.tpm),
        ("max-concurrent", limits.max_concurrent),
    ] {
        if let Some(value) = value {
            line.push_str(&format!("  {name} {value}"));
        }
    }
    if let Some(budget) = limits.budget {
        line.push_str(&format!(
            "  budget ${}.{:06} {}",
            budget.limit_micro_usd / 1_000_000,
            budget.limit_micro_usd % 1_000_000,
            budget.period
        ));
    }
    line
}

/// RFC 3339 in UTC, to the second.
fn time(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}
