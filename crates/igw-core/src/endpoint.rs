//! Endpoint identity and live endpoint state.
//!
//! An endpoint is one (pod, target port) pair — a "rank" in upstream terms: a data-parallel model
//! server listening on several ports is several endpoints. Its identity ([`EndpointMeta`]) changes
//! only when the pod changes; its metrics are replaced on every scrape ([`Endpoint::set_metrics`])
//! and its in-flight load changes on every request ([`InFlight`]). None of these take a lock.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::error::CoreError;
use crate::metrics::EndpointMetrics;

/// Pod labels (sorted, so debug output and hashing are stable).
pub type Labels = BTreeMap<String, String>;

/// The pod label that selects the metric mapping of an endpoint's engine (vllm, sglang, ...).
pub const ENGINE_TYPE_LABEL: &str = "inference.networking.k8s.io/engine-type";

/// The pod label naming an endpoint's accelerator (`H100`, `A10G`, ...); shown on
/// `/debug/endpoints`, never needed for routing (speed is learned).
pub const ACCELERATOR_LABEL: &str = "inference.networking.k8s.io/accelerator";

/// The pod label giving what an endpoint costs per hour, a positive decimal number in any
/// currency used consistently across the pool (`8.22`); read by `cheapest` placement.
pub const COST_PER_HOUR_LABEL: &str = "igw.dev/cost-per-hour";

/// A small integer naming an endpoint inside one datastore, assigned on first sight and never
/// reused while the datastore lives. Indexes (prefix cache, in-flight maps) key on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u32);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The natural key of an endpoint: namespace, pod name and target port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointKey {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Target port on the pod.
    pub port: u16,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.pod, self.port)
    }
}

/// What identifies an endpoint and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Index of the target port among the pool's target ports (the "rank").
    pub rank: u16,
    /// Address the model server listens on (pod IP and target port).
    pub address: SocketAddr,
    /// Where its Prometheus metrics are scraped (`host:port`), usually the same as `address`.
    pub metrics_addr: SocketAddr,
    /// Pod labels.
    pub labels: Labels,
}

impl EndpointMeta {
    /// An endpoint for a plain `ip:port` model server with no Kubernetes identity: the pod name is
    /// the address, the namespace `default`, rank 0, metrics on the same address.
    pub fn from_addr(address: SocketAddr) -> Self {
        EndpointMeta {
            namespace: "default".to_string(),
            pod: address.to_string(),
            rank: 0,
            address,
            metrics_addr: address,
            labels: Labels::new(),
        }
    }

    /// Parses `ip:port` into a static endpoint (see [`EndpointMeta::from_addr`]).
    pub fn parse_addr(s: &str) -> Result<Self, CoreError> {
        let addr: SocketAddr = s.trim().parse().map_err(|_| CoreError::InvalidAddress(s.to_string()))?;
        Ok(Self::from_addr(addr))
    }

    /// Parses a comma-separated list of `ip:port` addresses.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, CoreError> {
        s.split(',').filter(|p| !p.trim().is_empty()).map(Self::parse_addr).collect()
    }

    /// The natural key of this endpoint.
    pub fn key(&self) -> EndpointKey {
        EndpointKey { namespace: self.namespace.clone(), pod: self.pod.clone(), port: self.address.port() }
    }

    /// The endpoint's name as upstream writes it: `<pod>-rank-<idx>`.
    pub fn name(&self) -> String {
        format!("{}-rank-{}", self.pod, self.rank)
    }

    /// The pod IP.
    pub fn ip(&self) -> IpAddr {
        self.address.ip()
    }

    /// The engine-type label, if set and non-empty.
    pub fn engine_label(&self) -> Option<&str> {
        self.labels.get(ENGINE_TYPE_LABEL).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The accelerator label, if set and non-empty.
    pub fn accelerator(&self) -> Option<&str> {
        self.labels.get(ACCELERATOR_LABEL).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The cost per hour label as a number, if it is a finite positive one.
    pub fn cost_per_hour(&self) -> Option<f64> {
        parse_cost_per_hour(self.labels.get(COST_PER_HOUR_LABEL)?)
    }
}

/// A cost per hour: a finite positive decimal number.
pub fn parse_cost_per_hour(v: &str) -> Option<f64> {
    let x: f64 = v.trim().parse().ok()?;
    (x.is_finite() && x > 0.0).then_some(x)
}

/// The picker's own count of work it sent to an endpoint and has not yet seen finish.
///
/// Always fresh (unlike scraped metrics, which are up to one scrape old). Incremented when a
/// request is routed, decremented when its response ends or aborts.
#[derive(Debug, Default)]
pub struct InFlight {
    requests: AtomicU64,
    tokens: AtomicU64,
}

impl InFlight {
    /// Records one more request carrying an estimated `tokens` of work.
    pub fn add(&self, tokens: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Releases a request previously [`add`](Self::add)ed with the same token estimate.
    /// Never goes below zero, even if releases outnumber adds.
    pub fn release(&self, tokens: u64) {
        let _ = self.requests.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
        let _ = self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(tokens)));
    }

    /// Requests in flight.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Estimated tokens in flight.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }
}

/// One endpoint as the datastore holds it: identity plus live state.
#[derive(Debug)]
pub struct Endpoint {
    id: EndpointId,
    meta: EndpointMeta,
    metrics: ArcSwap<EndpointMetrics>,
    in_flight: InFlight,
}

impl Endpoint {
    /// A new endpoint with empty metrics (never scraped: stale from the start).
    pub fn new(id: EndpointId, meta: EndpointMeta) -> Self {
        Endpoint {
            id,
            meta,
            metrics: ArcSwap::from_pointee(EndpointMetrics::default()),
            in_flight: InFlight::default(),
        }
    }

    /// Its id in the datastore.
    pub fn id(&self) -> EndpointId {
        self.id
    }

    /// Its identity and address.
    pub fn meta(&self) -> &EndpointMeta {
        &self.meta
    }

    /// The address requests go to.
    pub fn address(&self) -> SocketAddr {
        self.meta.address
    }

    /// The latest published metrics (lock-free).
    pub fn metrics(&self) -> Arc<EndpointMetrics> {
        self.metrics.load_full()
    }

    /// Publishes new metrics atomically; readers see either the old or the new value, whole.
    pub fn set_metrics(&self, m: EndpointMetrics) {
        self.metrics.store(Arc::new(m));
    }

    /// The picker's in-flight accounting for this endpoint.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_rejects_garbage() {
        let eps = EndpointMeta::parse_list("127.0.0.1:8000, 10.0.0.2:9000,").unwrap_or_default();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].address.port(), 9000);
        assert_eq!(eps[0].name(), "127.0.0.1:8000-rank-0");
        assert_eq!(EndpointMeta::parse_list("nope:1"), Err(CoreError::InvalidAddress("nope:1".into())));
        assert!(EndpointMeta::parse_addr("127.0.0.1").is_err());
    }

    #[test]
    fn in_flight_never_underflows() {
        let f = InFlight::default();
        f.add(100);
        f.release(100);
        f.release(50);
        assert_eq!((f.requests(), f.tokens()), (0, 0));
        f.add(7);
        f.add(3);
        f.release(7);
        assert_eq!((f.requests(), f.tokens()), (1, 3));
    }

    #[test]
    fn metrics_swap_is_whole() {
        let meta = EndpointMeta::parse_addr("127.0.0.1:1").expect("valid");
        let ep = Endpoint::new(EndpointId(0), meta);
        assert!(ep.metrics().update_time.is_none());
        let m = EndpointMetrics { waiting: 3, ..Default::default() };
        ep.set_metrics(m);
        assert_eq!(ep.metrics().waiting, 3);
    }
}
