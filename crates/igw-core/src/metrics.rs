//! Per-endpoint metrics as scraped from a model server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::time::Instant;

/// What the data layer knows about one endpoint from its last successful scrape.
///
/// Field meanings follow the model-server protocol: `waiting` and `running` are request counts,
/// `kv_usage` is the fraction of KV-cache blocks in use (0..1). Fields the engine does not expose
/// keep their defaults. The value is immutable once published; a scrape publishes a new one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointMetrics {
    /// Requests waiting in the engine's queue.
    pub waiting: u32,
    /// Requests in the engine's running batch.
    pub running: u32,
    /// KV-cache utilisation, a fraction in 0..=1.
    pub kv_usage: f64,
    /// LoRA adapters loaded and serving.
    pub active_adapters: BTreeSet<String>,
    /// LoRA adapters that queued requests wait for.
    pub waiting_adapters: BTreeSet<String>,
    /// Most adapters the engine can hold at once (`max_lora`), if reported.
    pub max_adapters: Option<u32>,
    /// KV-cache block size in tokens, if reported.
    pub cache_block_size: Option<u32>,
    /// Number of KV-cache blocks on the GPU, if reported.
    pub cache_num_blocks: Option<u64>,
    /// When these metrics were last refreshed by a successful scrape; `None` = never.
    pub update_time: Option<Instant>,
    /// The models the server lists at `/v1/models`: its base model(s) and the LoRA adapters loaded
    /// on it, idle or busy. `None` when not known (not polled, or the server does not list them).
    /// vLLM's metrics name an adapter only while requests for it run or wait; this list is how a
    /// gateway learns where an idle adapter is loaded.
    pub served_models: Option<Arc<BTreeSet<String>>>,
}

impl EndpointMetrics {
    /// Age of these metrics at `now`; `None` if never scraped.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.update_time.map(|t| now.saturating_duration_since(t))
    }

    /// True if never scraped or older than `threshold` at `now`.
    pub fn is_stale(&self, now: Instant, threshold: Duration) -> bool {
        self.age(now).is_none_or(|a| a > threshold)
    }

    /// True if `adapter` is loaded (active) on this endpoint.
    pub fn has_active_adapter(&self, adapter: &str) -> bool {
        self.active_adapters.contains(adapter)
    }

    /// Whether this endpoint serves `model` by its `/v1/models` list: `None` when the list is not
    /// known.
    pub fn serves(&self, model: &str) -> Option<bool> {
        self.served_models.as_ref().map(|s| s.contains(model))
    }

    /// True if `adapter` is active or awaited on this endpoint.
    pub fn has_adapter(&self, adapter: &str) -> bool {
        self.active_adapters.contains(adapter) || self.waiting_adapters.contains(adapter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness() {
        let mut m = EndpointMetrics::default();
        let now = Instant::from_millis(1_000);
        assert!(m.is_stale(now, Duration::from_secs(10)));
        m.update_time = Some(Instant::from_millis(900));
        assert!(!m.is_stale(now, Duration::from_millis(100)));
        assert!(m.is_stale(now, Duration::from_millis(99)));
    }

    #[test]
    fn served_models_are_unknown_until_listed() {
        let mut m = EndpointMetrics::default();
        assert_eq!(m.serves("a"), None);
        m.served_models = Some(Arc::new(["base".to_owned(), "a".to_owned()].into_iter().collect()));
        assert_eq!((m.serves("a"), m.serves("b")), (Some(true), Some(false)));
    }
}
