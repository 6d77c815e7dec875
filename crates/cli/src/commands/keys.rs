//! `passerelle keys create|list|revoke`: API keys in the embedded store.

use anyhow::Context as _;
use passerelle_store::{EmbeddedStore, KeyRecord, KeyStore as _};

use crate::{
    args::{KeysAction, KeysArgs},
    config::{self, FileConfig},
};

pub async fn run(args: KeysArgs, file: &FileConfig) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(config::default_data_dir);
    let store = EmbeddedStore::open(&data_dir)
        .with_context(|| format!("cannot open the key store in {}", data_dir.display()))?;
    match args.action {
        KeysAction::Create { name } => {
            let (record, secret) = store.create(&name).await?;
            println!(
                "created key {} ({}) named {:?}",
                record.id, record.prefix, record.name
            );
            println!("{}", secret.expose());
            eprintln!("Store this secret now: it is shown only once and cannot be recovered.");
        }
        KeysAction::List => {
            let keys = store.list().await?;
            if keys.is_empty() {
                println!("no keys in {}", data_dir.display());
            }
            for key in keys {
                println!("{}", describe(&key));
            }
        }
        KeysAction::Revoke { key } => {
            let record = store.revoke(&key).await?;
            println!("revoked {}", describe(&record));
        }
    }
    Ok(())
}

fn describe(key: &KeyRecord) -> String {
    let state = match key.revoked_at {
        Some(at) => format!("revoked at {at}"),
        None => "active".to_owned(),
    };
    format!(
        "{}  {}  {:<24}  created {}  {}",
        key.id, key.prefix, key.name, key.created_at, state
    )
}
