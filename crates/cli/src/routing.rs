//! The routing table from the file (`[[upstreams]]`, `[routing]`) and the `--upstream` /
//! `--upstream-key` flags, and its reload on SIGHUP (and, in `config_watch`, when the file
//! changes).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use passerelle_gateway::{CascadeConfig, RoutingConfig, UpstreamConfig};
use serde::Deserialize;

use crate::config::FileConfig;

/// One `[[upstreams]]` entry of the file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    pub model: String,
    pub url: String,
    /// The key, written in the file.
    pub api_key: Option<String>,
    /// The name of an environment variable holding the key, to keep it out of the file.
    pub api_key_env: Option<String>,
    pub upstream_model: Option<String>,
    pub weight: Option<u32>,
}

/// The file's `[routing]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// `[routing.cascades.<name>]`: virtual models answered small-to-large.
    #[serde(default)]
    pub cascades: BTreeMap<String, CascadeConfig>,
    pub retries: Option<u32>,
    pub timeout_secs: Option<f64>,
    pub eject_after: Option<u32>,
    pub eject_for_secs: Option<f64>,
}

/// Where the routing table comes from, kept to build it again on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct RoutingSource {
    /// The configuration file, read again on reload.
    pub config_path: Option<PathBuf>,
    /// `--upstream MODEL=URL` values.
    pub upstreams: Vec<String>,
    /// `--upstream-key [MODEL=]KEY` values.
    pub upstream_keys: Vec<String>,
    /// Whether a change of the file reloads the table (SIGHUP always does).
    pub watch_file: bool,
}

impl RoutingSource {
    /// The table from `file` and the flags.
    pub fn build(&self, file: &FileConfig) -> anyhow::Result<RoutingConfig> {
        let defaults = RoutingConfig::default();
        let section = file.routing.clone().unwrap_or_default();
        let mut upstreams = file
            .upstreams
            .iter()
            .flatten()
            .map(from_file)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let flagged = self.flag_upstreams()?;
        // A model given on the command line replaces the file's replicas of it.
        upstreams.retain(|u| !flagged.iter().any(|f| f.model == u.model));
        upstreams.extend(flagged);
        let seconds = |name: &str, secs: f64| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("routing.{name} must be a positive number of seconds"))
        };
        Ok(RoutingConfig {
            upstreams,
            aliases: section.aliases,
            fallbacks: section.fallbacks,
            cascades: section.cascades,
            retries: section.retries.unwrap_or(defaults.retries),
            timeout: section
                .timeout_secs
                .map(|s| seconds("timeout_secs", s))
                .transpose()?,
            eject_after: section.eject_after.unwrap_or(defaults.eject_after),
            eject_for: section
                .eject_for_secs
                .map(|s| seconds("eject_for_secs", s))
                .transpose()?
                .unwrap_or(defaults.eject_for),
        })
    }

    /// Reads the file again and builds the table, for a reload.
    pub fn reload(&self) -> anyhow::Result<RoutingConfig> {
        let file = FileConfig::load(self.config_path.as_deref())?;
        self.build(&file)
    }

    fn flag_upstreams(&self) -> anyhow::Result<Vec<UpstreamConfig>> {
        let mut upstreams = self
            .upstreams
            .iter()
            .map(|value| {
                let (model, url) = value
                    .split_once('=')
                    .filter(|(m, u)| !m.trim().is_empty() && !u.trim().is_empty())
                    .with_context(|| {
                        format!("--upstream expects MODEL=URL (e.g. llama=http://127.0.0.1:8000/v1), got {value:?}")
                    })?;
                Ok(UpstreamConfig::new(model.trim(), url.trim()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for value in &self.upstream_keys {
            match value.split_once('=') {
                // `MODEL=KEY` when MODEL is an upstream given by flag; keys may themselves
                // contain `=` (base64 padding), so anything else is a bare key.
                Some((model, key)) if upstreams.iter().any(|u| u.model == model) => {
                    for upstream in upstreams.iter_mut().filter(|u| u.model == model) {
                        upstream.api_key = Some(key.to_owned());
                    }
                }
                _ => {
                    for upstream in upstreams.iter_mut().filter(|u| u.api_key.is_none()) {
                        upstream.api_key = Some(value.clone());
                    }
                }
            }
        }
        Ok(upstreams)
    }
}

fn from_file(entry: &UpstreamEntry) -> anyhow::Result<UpstreamConfig> {
    let api_key = match (&entry.api_key, &entry.api_key_env) {
        (Some(_), Some(_)) => anyhow::bail!(
            "upstream {:?}: set api_key or api_key_env, not both",
            entry.model
        ),
        (Some(key), None) => Some(key.clone()),
        (None, Some(var)) => Some(std::env::var(var).with_context(|| {
            format!(
                "upstream {:?}: the variable {var} (api_key_env) is not set",
                entry.model
            )
        })?),
        (None, None) => None,
    };
    Ok(UpstreamConfig {
        model: entry.model.clone(),
        url: entry.url.clone(),
        api_key,
        upstream_model: entry.upstream_model.clone(),
        weight: entry.weight.unwrap_or(1),
    })
}

/// Reloads the routing table into `state` on every SIGHUP; a table that fails to load is
/// logged and the one in force kept.
pub fn reload_on_sighup(state: passerelle_gateway::AppState, source: RoutingSource) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP: routing reload is off");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            reload(&state, &source, "SIGHUP");
        }
    });
    #[cfg(not(unix))]
    let _ = (state, source);
}

/// Builds the table from `source` again and puts it in force in `state`; a table that fails to
/// load is logged and the one in force kept. `trigger` says why, for the log.
pub fn reload(state: &passerelle_gateway::AppState, source: &RoutingSource, trigger: &str) {
    let result = source
        .reload()
        .and_then(|routing| Ok(state.reload_routing(&routing)?));
    match result {
        Ok(()) => tracing::info!(trigger, "routing table reloaded"),
        Err(err) => tracing::warn!(
            trigger,
            error = %format!("{err:#}"),
            "routing reload failed; keeping the current table"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(upstreams: &[&str], keys: &[&str]) -> RoutingSource {
        RoutingSource {
            config_path: None,
            upstreams: upstreams.iter().map(|s| (*s).to_owned()).collect(),
            upstream_keys: keys.iter().map(|s| (*s).to_owned()).collect(),
            watch_file: true,
        }
    }

    #[test]
    fn flags_name_models_and_keys() {
        let routing = source(
            &[
                "llama=http://a:8000/v1",
                "llama=http://b:8000/v1",
                "gpt=https://api.openai.com/v1",
            ],
            &["gpt=sk-abc=", "shared"],
        )
        .build(&FileConfig::default())
        .unwrap();
        assert_eq!(routing.upstreams.len(), 3);
        assert_eq!(routing.upstreams[2].api_key.as_deref(), Some("sk-abc="));
        assert_eq!(routing.upstreams[0].api_key.as_deref(), Some("shared"));
        assert_eq!(routing.upstreams[1].url, "http://b:8000/v1");
    }

    #[test]
    fn the_file_gives_upstreams_aliases_and_policies() {
        let file: FileConfig = toml::from_str(
            r#"
            [[upstreams]]
            model = "llama"
            url = "http://a:8000/v1"
            upstream_model = "meta/llama"
            weight = 2

            [[upstreams]]
            model = "other"
            url = "http://c:8000/v1"

            [routing]
            retries = 1
            timeout_secs = 30
            eject_after = 5
            eject_for_secs = 0.5
            aliases = { "gpt-4o-mini" = "llama" }
            fallbacks = { "llama" = ["qwen"] }
            "#,
        )
        .unwrap();
        let routing = source(&["other=http://d:8000/v1"], &[])
            .build(&file)
            .unwrap();
        assert_eq!(
            routing.upstreams.len(),
            2,
            "the flag replaced the file's `other`"
        );
        assert_eq!(routing.upstreams[0].weight, 2);
        assert_eq!(routing.upstreams[1].url, "http://d:8000/v1");
        assert_eq!(routing.retries, 1);
        assert_eq!(routing.timeout, Some(Duration::from_secs(30)));
        assert_eq!(routing.eject_for, Duration::from_millis(500));
        assert_eq!(routing.aliases["gpt-4o-mini"], "llama");
        assert_eq!(routing.fallbacks["llama"], ["qwen"]);
    }

    #[test]
    fn cascades_come_from_the_file_with_their_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            [routing.cascades.auto]
            small = "qwen-small"
            large = "gpt-4o"
            min_mean_logprob = -1.5

            [routing.cascades.strict]
            small = "qwen-small"
            large = "gpt-4o"
            escalate_on_refusal = false
            refusal_phrases = ["je ne peux pas"]
            "#,
        )
        .unwrap();
        let routing = source(&[], &[]).build(&file).unwrap();
        let auto = &routing.cascades["auto"];
        assert_eq!(
            (auto.small.as_str(), auto.large.as_str()),
            ("qwen-small", "gpt-4o")
        );
        assert!((auto.min_mean_logprob + 1.5).abs() < f64::EPSILON);
        assert!(auto.escalate_on_refusal);
        assert_eq!(
            auto.refusal_phrases.len(),
            passerelle_gateway::routing::DEFAULT_REFUSAL_PHRASES.len()
        );
        let strict = &routing.cascades["strict"];
        assert!(!strict.escalate_on_refusal);
        assert!(
            (strict.min_mean_logprob + 1.0).abs() < f64::EPSILON,
            "the default"
        );
        assert_eq!(strict.refusal_phrases, ["je ne peux pas"]);

        let typo: Result<FileConfig, _> =
            toml::from_str("[routing.cascades.auto]\nsmall = \"a\"\nlarge = \"b\"\nthreshold = 1");
        assert!(typo.is_err(), "unknown keys are refused");
    }

    #[test]
    fn malformed_values_are_clear_errors() {
        let err = source(&["no-url"], &[])
            .build(&FileConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("MODEL=URL"), "{err}");
        let file: FileConfig = toml::from_str("[routing]\ntimeout_secs = 0").unwrap();
        assert!(source(&[], &[]).build(&file).is_err());
    }
}
