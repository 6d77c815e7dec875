//! Client-side balancing over every address a DNS name resolves to: the way the gateway spreads
//! calls over the replicas of a model service behind a Kubernetes headless Service.
//!
//! An endpoint written `dns:///host:port` becomes a balanced channel (tower's power-of-two-
//! choices over ready connections, as tonic's `balance_channel` does). A task resolves the name
//! at once and then every [`REFRESH`], adding the addresses that appeared and removing those
//! that went away; a failed lookup keeps the last known set. The task ends when the channel is
//! dropped.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use tonic::transport::{Channel, Endpoint, channel::Change};

/// How often the name is resolved again: how long a new replica waits for traffic.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);

/// The scheme that asks for DNS balancing, as gRPC clients spell it.
const SCHEME: &str = "dns:///";

/// `host` and `port` of a `dns:///host:port` endpoint; `None` for any other endpoint.
pub(crate) fn dns_target(endpoint: &str) -> Option<Result<(String, u16), String>> {
    let rest = endpoint.strip_prefix(SCHEME)?;
    let parsed = rest
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .map(|(host, port)| (host.trim_matches(['[', ']']).to_owned(), port));
    Some(parsed.ok_or_else(|| format!("`{endpoint}` is not dns:///host:port")))
}

/// What to add and remove to go from `known` to `resolved`.
fn changes(
    known: &BTreeSet<SocketAddr>,
    resolved: &BTreeSet<SocketAddr>,
) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    (
        resolved.difference(known).copied().collect(),
        known.difference(resolved).copied().collect(),
    )
}

/// A channel balanced over the addresses of `host:port`, each connected with `configure`.
pub(crate) fn balanced(
    host: String,
    port: u16,
    configure: impl Fn(Endpoint) -> Endpoint + Send + 'static,
) -> Channel {
    let (channel, changes_tx) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(async move {
        let mut known = BTreeSet::new();
        loop {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addresses) => {
                    let resolved: BTreeSet<SocketAddr> = addresses.collect();
                    let (added, removed) = changes(&known, &resolved);
                    for address in added {
                        let Ok(endpoint) = Endpoint::from_shared(format!("http://{address}"))
                        else {
                            continue;
                        };
                        tracing::info!(%host, %address, "model service replica added");
                        if changes_tx
                            .send(Change::Insert(address, configure(endpoint)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    for address in removed {
                        tracing::info!(%host, %address, "model service replica removed");
                        if changes_tx.send(Change::Remove(address)).await.is_err() {
                            return;
                        }
                    }
                    known = resolved;
                }
                Err(err) => tracing::warn!(%host, error = %err, "cannot resolve model service"),
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = changes_tx.closed() => return,
            }
        }
    });
    channel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_endpoints_are_balanced() {
        assert_eq!(
            dns_target("dns:///llm.passerelle.svc:50051"),
            Some(Ok(("llm.passerelle.svc".to_owned(), 50051)))
        );
        assert_eq!(
            dns_target("dns:///[::1]:7"),
            Some(Ok(("::1".to_owned(), 7)))
        );
        assert_eq!(dns_target("http://llm:50051"), None);
        assert!(matches!(dns_target("dns:///llm"), Some(Err(_))));
        assert!(matches!(dns_target("dns:///:80"), Some(Err(_))));
    }

    #[test]
    fn changes_add_the_new_and_remove_the_gone() {
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:1".parse().unwrap();
        let known = BTreeSet::from([a, b]);
        let resolved = BTreeSet::from([b, c]);
        assert_eq!(changes(&known, &resolved), (vec![c], vec![a]));
        assert_eq!(changes(&known, &known), (vec![], vec![]));
    }
}
