//! The routing table: aliases resolved, each upstream model's replicas in a [`Pool`], the
//! cascades, and the order in which models are tried for a request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::balancer::{AllEjected, Balancer, EjectionPolicy};
use super::cascade::Cascade;
use super::config::RoutingConfig;

/// Longest alias chain (`a` -> `b` -> `c`) followed before it is taken for a cycle.
const MAX_ALIAS_DEPTH: usize = 8;

/// Why a routing table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// An upstream's URL is not `http://` or `https://`.
    #[error("upstream {model:?}: invalid URL {url:?}: expected http://host:port/v1")]
    InvalidUrl { model: String, url: String },
    /// An upstream, alias or fallback names an empty model.
    #[error("routing: a model name is empty")]
    EmptyModel,
    /// An upstream's API key cannot be sent in a header (a control character).
    #[error("upstream {model:?}: the API key holds characters a header cannot carry")]
    InvalidApiKey { model: String },
    /// An upstream's weight is 0.
    #[error("upstream {model:?} at {url:?}: weight must be at least 1")]
    ZeroWeight { model: String, url: String },
    /// A name is both an alias and a served model.
    #[error("routing: {0:?} is both an alias and an upstream model")]
    AliasShadowsModel(String),
    /// Aliases lead back to themselves.
    #[error("routing: the alias {0:?} never resolves to a model (a cycle)")]
    AliasCycle(String),
    /// A cascade has the name of an upstream model or an alias.
    #[error("routing: the cascade {0:?} has the name of an upstream model or alias")]
    CascadeShadowsModel(String),
    /// A cascade's small or large model is a cascade (itself included), directly or through
    /// an alias.
    #[error(
        "routing: cascade {cascade:?} names {model:?}, which is a cascade; cascades cannot \
         contain cascades (nor form cycles)"
    )]
    CascadeOfCascade { cascade: String, model: String },
    /// A cascade's small and large models are the same model.
    #[error("routing: cascade {cascade:?} has {model:?} as both its small and its large model")]
    CascadeSameModel { cascade: String, model: String },
    /// A cascade's threshold is not a finite number at most 0.
    #[error(
        "routing: cascade {cascade:?}: min_mean_logprob must be a finite number at most 0, got {value}"
    )]
    CascadeThreshold { cascade: String, value: String },
    /// A cascade has fallbacks or is one.
    #[error(
        "routing: the cascade {0:?} cannot have fallbacks nor be one (its models' own fallbacks apply)"
    )]
    CascadeFallback(String),
}

/// One replica of an upstream model.
#[derive(Debug)]
pub(crate) struct Replica {
    /// The base URL without a trailing slash.
    pub(crate) base_url: String,
    /// `{base_url}/chat/completions` and `{base_url}/completions`, parsed once: parsing a URL
    /// per request is a measurable share of the gateway's cost.
    pub(crate) chat_url: http::Uri,
    pub(crate) completions_url: http::Uri,
    /// The `Host` header for both, made once for the same reason.
    pub(crate) host: http::HeaderValue,
    /// `Bearer <key>`, marked sensitive so that it is never logged.
    pub(crate) authorization: Option<http::HeaderValue>,
    /// The model name sent upstream.
    pub(crate) upstream_model: String,
}

impl Replica {
    /// The URL a request through `api` goes to.
    pub(crate) fn endpoint(&self, api: super::dispatch::Api) -> &http::Uri {
        match api {
            super::dispatch::Api::Chat => &self.chat_url,
            super::dispatch::Api::Completions => &self.completions_url,
        }
    }
}

/// The replicas of one upstream model and their balancing state.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) model: String,
    replicas: Vec<Replica>,
    /// A std lock: every section is a few comparisons, never across an await.
    balancer: Mutex<Balancer>,
}

impl Pool {
    fn balancer(&self) -> MutexGuard<'_, Balancer> {
        // A poisoned lock only means a panic between two counter updates; the counts stay usable.
        self.balancer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A replica for the next attempt, avoiding `tried` while another is in rotation.
    pub(crate) fn lease(self: &Arc<Self>, tried: &[usize]) -> Result<Lease, AllEjected> {
        let index = self.balancer().pick(Instant::now(), tried)?;
        Ok(Lease {
            pool: Arc::clone(self),
            index,
        })
    }

    /// How many replicas are in rotation now (not ejected), and how many there are.
    pub(crate) fn in_rotation(&self) -> (usize, usize) {
        let now = Instant::now();
        let balancer = self.balancer();
        let up = (0..self.replicas.len())
            .filter(|&index| balancer.in_rotation(index, now))
            .count();
        (up, self.replicas.len())
    }
}

/// One attempt's hold on a replica: counted as outstanding until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Arc<Pool>,
    index: usize,
}

impl Lease {
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn replica(&self) -> &Replica {
        &self.pool.replicas[self.index]
    }

    /// The replica answered (a 2xx, or a 4xx that is the client's doing).
    pub(crate) fn succeeded(&self) {
        self.pool.balancer().succeeded(self.index);
    }

    /// The replica failed; logs an ejection when this caused one.
    pub(crate) fn failed(&self) {
        if self.pool.balancer().failed(self.index, Instant::now()) {
            tracing::warn!(
                model = %self.pool.model,
                upstream = %self.replica().base_url,
                "upstream replica ejected after consecutive failures"
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.balancer().release(self.index);
    }
}

/// Where a model name leads.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// An external upstream.
    Upstream(Arc<Pool>),
    /// The llm service.
    Local,
}

/// Aliases, pools and fallbacks, built once from a [`RoutingConfig`].
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    aliases: BTreeMap<String, String>,
    pools: HashMap<String, Arc<Pool>>,
    fallbacks: BTreeMap<String, Vec<String>>,
    cascades: BTreeMap<String, Arc<Cascade>>,
    pub(crate) retries: u32,
    pub(crate) timeout: Option<Duration>,
}

impl RouteTable {
    pub(crate) fn new(config: &RoutingConfig) -> Result<Self, RoutingError> {
        let policy = EjectionPolicy {
            after: config.eject_after,
            cool_down: config.eject_for,
        };
        let mut grouped: BTreeMap<&str, Vec<Replica>> = BTreeMap::new();
        let mut weights: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for upstream in &config.upstreams {
            if upstream.model.is_empty() {
                return Err(RoutingError::EmptyModel);
            }
            let url = upstream.url.trim_end_matches('/');
            let endpoint = |path: &str| {
                format!("{url}/{path}")
                    .parse::<http::Uri>()
                    .ok()
                    .filter(|uri| uri.scheme().is_some() && uri.authority().is_some())
            };
            let (Some(chat_url), Some(completions_url)) =
                (endpoint("chat/completions"), endpoint("completions"))
            else {
                return Err(RoutingError::InvalidUrl {
                    model: upstream.model.clone(),
                    url: upstream.url.clone(),
                });
            };
            let host = chat_url
                .authority()
                .and_then(|authority| http::HeaderValue::from_str(authority.as_str()).ok());
            let Some(host) = host.filter(|_| {
                (url.starts_with("http://") || url.starts_with("https://"))
                    && url.parse::<http::Uri>().is_ok()
            }) else {
                return Err(RoutingError::InvalidUrl {
                    model: upstream.model.clone(),
                    url: upstream.url.clone(),
                });
            };
            if upstream.weight == 0 {
                return Err(RoutingError::ZeroWeight {
                    model: upstream.model.clone(),
                    url: upstream.url.clone(),
                });
            }
            let authorization =
                match upstream.api_key.as_deref().filter(|k| !k.is_empty()) {
                    None => None,
                    Some(key) => {
                        let mut value = http::HeaderValue::from_str(&format!("Bearer {key}"))
                            .map_err(|_| RoutingError::InvalidApiKey {
                                model: upstream.model.clone(),
                            })?;
                        value.set_sensitive(true);
                        Some(value)
                    }
                };
            grouped.entry(&upstream.model).or_default().push(Replica {
                base_url: url.to_owned(),
                chat_url,
                completions_url,
                host,
                authorization,
                upstream_model: upstream
                    .upstream_model
                    .clone()
                    .unwrap_or_else(|| upstream.model.clone()),
            });
            weights
                .entry(&upstream.model)
                .or_default()
                .push(upstream.weight);
        }
        let pools = grouped
            .into_iter()
            .map(|(model, replicas)| {
                let balancer = Balancer::new(weights.remove(model).unwrap_or_default(), policy);
                let pool = Pool {
                    model: model.to_owned(),
                    replicas,
                    balancer: Mutex::new(balancer),
                };
                (model.to_owned(), Arc::new(pool))
            })
            .collect::<HashMap<_, _>>();
        for (alias, target) in &config.aliases {
            if alias.is_empty() || target.is_empty() {
                return Err(RoutingError::EmptyModel);
            }
            if pools.contains_key(alias) {
                return Err(RoutingError::AliasShadowsModel(alias.clone()));
            }
        }
        if config.fallbacks.values().flatten().any(String::is_empty) {
            return Err(RoutingError::EmptyModel);
        }
        let mut aliases = BTreeMap::new();
        for alias in config.aliases.keys() {
            aliases.insert(alias.clone(), follow(&config.aliases, alias)?);
        }
        let cascades = cascades(config, &aliases, &pools)?;
        Ok(Self {
            aliases,
            pools,
            fallbacks: config.fallbacks.clone(),
            cascades,
            retries: config.retries,
            timeout: config.timeout,
        })
    }

    /// The model an alias stands for, or `model` itself.
    pub(crate) fn resolve<'a>(&'a self, model: &'a str) -> &'a str {
        self.aliases.get(model).map_or(model, String::as_str)
    }

    /// The cascade `model` (already resolved) names, if it is one.
    pub(crate) fn cascade(&self, model: &str) -> Option<&Arc<Cascade>> {
        self.cascades.get(model)
    }

    /// Where `model` (already resolved) is served.
    pub(crate) fn target(&self, model: &str) -> Target {
        match self.pools.get(model) {
            Some(pool) => Target::Upstream(Arc::clone(pool)),
            None => Target::Local,
        }
    }

    /// The models to try for `requested`, in order: what it resolves to, then its fallbacks
    /// (or those of the alias itself when it has its own), each resolved, without repeats.
    /// Lazy: most requests try only the first, and a list would be an allocation for each.
    pub(crate) fn chain<'a>(&'a self, requested: &'a str) -> impl Iterator<Item = &'a str> {
        let primary = self.resolve(requested);
        let fallbacks = self
            .fallbacks
            .get(requested)
            .or_else(|| self.fallbacks.get(primary))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let fallbacks = fallbacks
            .iter()
            .enumerate()
            .filter_map(move |(i, fallback)| {
                let model = self.resolve(fallback);
                let repeated = model == primary
                    || fallbacks[..i]
                        .iter()
                        .any(|earlier| self.resolve(earlier) == model);
                (!repeated).then_some(model)
            });
        std::iter::once(primary).chain(fallbacks)
    }

    /// Whether `model` is an alias, an upstream model or a cascade: a name the operator
    /// configured, safe as a metric label.
    pub(crate) fn knows(&self, model: &str) -> bool {
        self.pools.contains_key(model)
            || self.aliases.contains_key(model)
            || self.cascades.contains_key(model)
    }

    /// Upstream models, aliases and cascades, for the model list.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self
            .pools
            .keys()
            .chain(self.aliases.keys())
            .chain(self.cascades.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// The upstream models' pools, by model name.
    pub(crate) fn pools(&self) -> Vec<&Arc<Pool>> {
        let mut pools: Vec<&Arc<Pool>> = self.pools.values().collect();
        pools.sort_unstable_by(|a, b| a.model.cmp(&b.model));
        pools
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pools.is_empty() && self.aliases.is_empty() && self.cascades.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn pool(&self, model: &str) -> Option<&Arc<Pool>> {
        self.pools.get(model)
    }
}

/// The cascades, their members resolved through `aliases` (already followed to their end).
/// A member that is neither an upstream model nor an alias is taken for a model of the llm
/// service, which only the service can confirm, at the first request.
fn cascades(
    config: &RoutingConfig,
    aliases: &BTreeMap<String, String>,
    pools: &HashMap<String, Arc<Pool>>,
) -> Result<BTreeMap<String, Arc<Cascade>>, RoutingError> {
    let resolve = |model: &str| aliases.get(model).map_or(model, String::as_str).to_owned();
    for name in config.cascades.keys() {
        if pools.contains_key(name) || aliases.contains_key(name) {
            return Err(RoutingError::CascadeShadowsModel(name.clone()));
        }
    }
    let mut cascades = BTreeMap::new();
    for (name, cascade) in &config.cascades {
        if name.is_empty() || cascade.small.is_empty() || cascade.large.is_empty() {
            return Err(RoutingError::EmptyModel);
        }
        if config.fallbacks.contains_key(name)
            || config
                .fallbacks
                .values()
                .flatten()
                .any(|fallback| resolve(fallback) == *name)
        {
            return Err(RoutingError::CascadeFallback(name.clone()));
        }
        let small = resolve(&cascade.small);
        let large = resolve(&cascade.large);
        for model in [&small, &large] {
            if config.cascades.contains_key(model) {
                return Err(RoutingError::CascadeOfCascade {
                    cascade: name.clone(),
                    model: model.clone(),
                });
            }
        }
        if small == large {
            return Err(RoutingError::CascadeSameModel {
                cascade: name.clone(),
                model: small,
            });
        }
        let threshold = cascade.min_mean_logprob;
        if !threshold.is_finite() || threshold > 0.0 {
            return Err(RoutingError::CascadeThreshold {
                cascade: name.clone(),
                value: threshold.to_string(),
            });
        }
        let built = Cascade::new(name, &small, &large, cascade);
        cascades.insert(name.clone(), Arc::new(built));
    }
    Ok(cascades)
}

fn follow(aliases: &BTreeMap<String, String>, alias: &str) -> Result<String, RoutingError> {
    let mut current = alias;
    for _ in 0..MAX_ALIAS_DEPTH {
        match aliases.get(current) {
            Some(next) if next == alias => break,
            Some(next) => current = next,
            None => return Ok(current.to_owned()),
        }
    }
    Err(RoutingError::AliasCycle(alias.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::config::UpstreamConfig;
    use super::*;

    fn config() -> RoutingConfig {
        let mut config = RoutingConfig {
            upstreams: vec![
                UpstreamConfig::new("big", "http://10.0.0.1:8000/v1/"),
                UpstreamConfig {
                    upstream_model: Some("meta/big".into()),
                    ..UpstreamConfig::new("big", "http://10.0.0.2:8000/v1")
                },
            ],
            ..RoutingConfig::default()
        };
        config.aliases.insert("gpt-4o-mini".into(), "small".into());
        config.aliases.insert("best".into(), "big".into());
        config.aliases.insert("newest".into(), "best".into());
        config
            .fallbacks
            .insert("big".into(), vec!["gpt-4o-mini".into(), "big".into()]);
        config
    }

    #[test]
    fn aliases_resolve_through_chains() {
        let table = RouteTable::new(&config()).unwrap();
        assert_eq!(table.resolve("gpt-4o-mini"), "small");
        assert_eq!(table.resolve("newest"), "big");
        assert_eq!(table.resolve("other"), "other");
    }

    #[test]
    fn upstream_models_have_pools_and_the_rest_is_local() {
        let table = RouteTable::new(&config()).unwrap();
        let Target::Upstream(pool) = table.target("big") else {
            panic!("big is an upstream model");
        };
        assert_eq!(pool.replicas.len(), 2);
        assert_eq!(pool.replicas[0].base_url, "http://10.0.0.1:8000/v1");
        assert_eq!(pool.replicas[0].upstream_model, "big");
        assert_eq!(pool.replicas[1].upstream_model, "meta/big");
        assert!(matches!(table.target("small"), Target::Local));
    }

    #[test]
    fn the_chain_is_the_model_then_its_fallbacks_resolved_once_each() {
        let table = RouteTable::new(&config()).unwrap();
        let chain = |model| table.chain(model).collect::<Vec<_>>();
        assert_eq!(chain("newest"), ["big", "small"]);
        assert_eq!(chain("small"), ["small"]);
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut cyclic = config();
        cyclic.aliases.insert("small".into(), "gpt-4o-mini".into());
        assert!(matches!(
            RouteTable::new(&cyclic),
            Err(RoutingError::AliasCycle(_))
        ));
        let mut shadow = config();
        shadow.aliases.insert("big".into(), "small".into());
        assert_eq!(
            RouteTable::new(&shadow).unwrap_err(),
            RoutingError::AliasShadowsModel("big".into())
        );
        let mut bad_url = config();
        bad_url.upstreams[0].url = "10.0.0.1:8000".into();
        assert!(matches!(
            RouteTable::new(&bad_url),
            Err(RoutingError::InvalidUrl { .. })
        ));
        let mut zero = config();
        zero.upstreams[0].weight = 0;
        assert!(matches!(
            RouteTable::new(&zero),
            Err(RoutingError::ZeroWeight { .. })
        ));
    }

    fn with_cascade(small: &str, large: &str) -> RoutingConfig {
        let mut config = config();
        config.cascades.insert(
            "auto".into(),
            super::super::config::CascadeConfig::new(small, large),
        );
        config
    }

    #[test]
    fn cascades_resolve_their_models_through_aliases_and_are_listed() {
        let mut config = with_cascade("gpt-4o-mini", "newest");
        config.aliases.insert("smart".into(), "auto".into());
        let table = RouteTable::new(&config).unwrap();
        let cascade = table.cascade(table.resolve("smart")).unwrap();
        assert_eq!(cascade.name, "auto");
        assert_eq!(
            (cascade.small.as_str(), cascade.large.as_str()),
            ("small", "big")
        );
        assert!(table.names().any(|n| n == "auto"));
        assert!(table.knows("auto"));
        assert!(table.cascade("big").is_none());
    }

    #[test]
    fn bad_cascades_are_refused_with_their_reason() {
        let nested = {
            let mut config = with_cascade("small", "big");
            config.cascades.insert(
                "outer".into(),
                super::super::config::CascadeConfig::new("auto", "big"),
            );
            config
        };
        assert_eq!(
            RouteTable::new(&nested).unwrap_err(),
            RoutingError::CascadeOfCascade {
                cascade: "outer".into(),
                model: "auto".into()
            }
        );
        let mut cycle = with_cascade("small", "me");
        cycle.aliases.insert("me".into(), "auto".into());
        assert!(matches!(
            RouteTable::new(&cycle),
            Err(RoutingError::CascadeOfCascade { .. })
        ));
        let same = with_cascade("gpt-4o-mini", "small");
        assert!(matches!(
            RouteTable::new(&same),
            Err(RoutingError::CascadeSameModel { .. })
        ));
        let mut shadow = with_cascade("small", "big");
        shadow.cascades.insert(
            "big".into(),
            super::super::config::CascadeConfig::new("small", "other"),
        );
        assert_eq!(
            RouteTable::new(&shadow).unwrap_err(),
            RoutingError::CascadeShadowsModel("big".into())
        );
        let mut fallback = with_cascade("small", "big");
        fallback
            .fallbacks
            .insert("small".into(), vec!["auto".into()]);
        assert_eq!(
            RouteTable::new(&fallback).unwrap_err(),
            RoutingError::CascadeFallback("auto".into())
        );
        let mut threshold = with_cascade("small", "big");
        threshold.cascades.get_mut("auto").unwrap().min_mean_logprob = 0.5;
        let err = RouteTable::new(&threshold).unwrap_err();
        assert!(err.to_string().contains("min_mean_logprob"), "{err}");
        let empty = with_cascade("", "big");
        assert_eq!(
            RouteTable::new(&empty).unwrap_err(),
            RoutingError::EmptyModel
        );
    }

    #[test]
    fn leases_count_outstanding_requests_until_dropped() {
        let table = RouteTable::new(&config()).unwrap();
        let pool = table.pool("big").unwrap();
        let first = pool.lease(&[]).unwrap();
        let second = pool.lease(&[]).unwrap();
        assert_ne!(first.index(), second.index(), "the busy one is avoided");
        drop(second);
        let third = pool.lease(&[]).unwrap();
        assert_ne!(third.index(), first.index());
    }
}
