//! The scrape loop: one Tokio task per endpoint fetching `http://{metrics_addr}{path}` every
//! interval and publishing the extracted metrics with [`Endpoint::set_metrics`].
//!
//! A [`Scraper`] follows a [`Datastore`] in one of two ways:
//! - push: whoever writes the datastore calls [`Scraper::sync`] with the new snapshot;
//! - poll: [`Scraper::follow`] spawns a task that checks the datastore's generation every
//!   interval and syncs when it changed.
//!
//! `sync` starts a task for each new endpoint, stops tasks of endpoints that left, and restarts
//! the task of an endpoint whose [`Endpoint`] object was replaced (its address or labels
//! changed). Tasks stop when the scraper's cancellation token fires: on [`Scraper::shutdown`],
//! when a parent token passed to [`Scraper::with_parent_token`] is cancelled, or when the
//! `Scraper` is dropped.
//!
//! Errors are logged only on transitions, per endpoint: one line when scraping starts failing
//! (fetch error, HTTP status, timeout, or a page without any usable field) and one when it
//! recovers; likewise one line when a single field becomes unavailable and one when it returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use igw_core::time::{Clock, process_clock};
use igw_core::{Datastore, Endpoint, EndpointId, Snapshot};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::engine::{EngineMapping, EngineRegistry, UnknownEngine};
use crate::extract::{Extraction, Field, extract_from_bytes};

/// Scrape settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeConfig {
    /// Time between scrapes of one endpoint (upstream `--refresh-metrics-interval`, 50 ms).
    pub interval: Duration,
    /// Limit on one scrape: connect, response and body (upstream collector timeout, 1 s).
    pub timeout: Duration,
    /// URL path of the metrics page (`/metrics`).
    pub path: String,
    /// Largest body accepted; longer pages fail the scrape (16 MiB).
    pub max_body_bytes: usize,
    /// URL path of the OpenAI model list on the serving address (`/v1/models`); empty: not polled.
    /// The list says which LoRA adapters are loaded on an endpoint even while none of their
    /// requests run ([`igw_core::EndpointMetrics::served_models`]).
    pub models_path: String,
    /// Time between polls of one endpoint's model list (1 s: it changes only when adapters are
    /// loaded or unloaded).
    pub models_interval: Duration,
}

impl ScrapeConfig {
    /// This configuration with the model-list poll every `every`; zero turns the poll off.
    pub fn with_models_interval(mut self, every: Duration) -> Self {
        if every.is_zero() {
            self.models_path.clear();
        } else {
            self.models_interval = every;
        }
        self
    }
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
            path: "/metrics".to_owned(),
            max_body_bytes: 16 << 20,
            models_path: "/v1/models".to_owned(),
            models_interval: Duration::from_secs(1),
        }
    }
}

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The endpoint's engine label names no mapping.
    #[error(transparent)]
    UnknownEngine(#[from] UnknownEngine),
    /// The scrape URL could not be built.
    #[error("invalid scrape URL {0:?}")]
    InvalidUrl(String),
    /// Connecting or sending the request failed.
    #[error("request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The server answered with a non-2xx status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Reading the body failed (including bodies over the size limit).
    #[error("reading body failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The scrape took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The model list could not be read.
    #[error(transparent)]
    Models(#[from] crate::models::ModelsError),
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Shared {
    client: HttpClient,
    config: ScrapeConfig,
    engines: EngineRegistry,
    clock: Arc<dyn Clock>,
}

impl Shared {
    fn uri(&self, ep: &Endpoint) -> Result<Uri, ScrapeError> {
        let url = format!("http://{}{}", ep.meta().metrics_addr, self.config.path);
        url.parse().map_err(|_| ScrapeError::InvalidUrl(url))
    }

    async fn fetch(&self, uri: Uri) -> Result<Bytes, ScrapeError> {
        let req = Request::get(uri)
            .header(http::header::ACCEPT, "text/plain;version=0.0.4;q=1,*/*;q=0.1")
            .body(Empty::new())
            .map_err(|e| ScrapeError::InvalidUrl(e.to_string()))?;
        let fetch = async {
            let resp = self.client.request(req).await.map_err(ScrapeError::Request)?;
            if !resp.status().is_success() {
                return Err(ScrapeError::Status(resp.status().as_u16()));
            }
            let body = Limited::new(resp.into_body(), self.config.max_body_bytes);
            Ok(body.collect().await.map_err(ScrapeError::Body)?.to_bytes())
        };
        tokio::time::timeout(self.config.timeout, fetch).await.map_err(|_| ScrapeError::Timeout(self.config.timeout))?
    }

    /// The URL of `ep`'s model list, or `None` when model lists are not polled.
    fn models_uri(&self, ep: &Endpoint) -> Option<Result<Uri, ScrapeError>> {
        if self.config.models_path.is_empty() {
            return None;
        }
        let url = format!("http://{}{}", ep.address(), self.config.models_path);
        Some(url.parse().map_err(|_| ScrapeError::InvalidUrl(url)))
    }

    async fn models(&self, uri: Uri) -> Result<BTreeSet<String>, ScrapeError> {
        let body = self.fetch(uri).await?;
        Ok(crate::models::served_models(&body)?)
    }

    async fn scrape(&self, ep: &Endpoint, mapping: &EngineMapping, uri: Uri) -> Result<Extraction, ScrapeError> {
        let body = self.fetch(uri).await?;
        Ok(extract_from_bytes(&body, mapping, &ep.metrics(), self.clock.now()))
    }
}

struct Task {
    endpoint: Arc<Endpoint>,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Mutex<HashMap<EndpointId, Task>>,
    cancel: CancellationToken,
}

/// What one [`Scraper::sync`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Tasks started for new endpoints.
    pub started: usize,
    /// Tasks stopped for endpoints that left.
    pub stopped: usize,
    /// Tasks restarted because the endpoint object was replaced.
    pub restarted: usize,
}

impl Inner {
    fn sync(&self, snapshot: &Snapshot) -> SyncReport {
        let mut report = SyncReport::default();
        let mut tasks = self.tasks.lock();
        if self.cancel.is_cancelled() {
            return report;
        }
        tasks.retain(|id, t| {
            let keep = snapshot.endpoint(*id).is_some();
            if !keep {
                t.token.cancel();
                report.stopped += 1;
            }
            keep
        });
        for ep in &snapshot.endpoints {
            match tasks.get(&ep.id()) {
                Some(t) if Arc::ptr_eq(&t.endpoint, ep) => continue,
                Some(t) => {
                    t.token.cancel();
                    report.restarted += 1;
                }
                None => report.started += 1,
            }
            let token = self.cancel.child_token();
            let handle = tokio::spawn(run_endpoint(self.shared.clone(), ep.clone(), token.clone()));
            tasks.insert(ep.id(), Task { endpoint: ep.clone(), token, handle });
        }
        report
    }
}

/// Scrapes every endpoint of a datastore and publishes their metrics.
///
/// All methods that start tasks must be called inside a Tokio runtime.
pub struct Scraper {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scraper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraper").field("config", &self.inner.shared.config).field("tasks", &self.len()).finish()
    }
}

impl Scraper {
    /// A scraper with `config` and `engines`, timing updates on the process clock.
    pub fn new(config: ScrapeConfig, engines: EngineRegistry) -> Self {
        Self::with_clock(config, engines, Arc::new(*process_clock()))
    }

    /// A scraper that stamps `update_time` from `clock`.
    pub fn with_clock(config: ScrapeConfig, engines: EngineRegistry, clock: Arc<dyn Clock>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .build(connector);
        let shared = Arc::new(Shared { client, config, engines, clock });
        Scraper {
            inner: Arc::new(Inner { shared, tasks: Mutex::new(HashMap::new()), cancel: CancellationToken::new() }),
        }
    }

    /// Ties this scraper's lifetime to `parent`: cancelling it stops every task. Call before
    /// starting any task.
    pub fn with_parent_token(self, parent: &CancellationToken) -> Self {
        let inner = Inner {
            shared: self.inner.shared.clone(),
            tasks: Mutex::new(HashMap::new()),
            cancel: parent.child_token(),
        };
        Scraper { inner: Arc::new(inner) }
    }

    /// The token that stops all of this scraper's tasks.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// The scrape settings.
    pub fn config(&self) -> &ScrapeConfig {
        &self.inner.shared.config
    }

    /// The engine mappings in force.
    pub fn engines(&self) -> &EngineRegistry {
        &self.inner.shared.engines
    }

    /// Starts, stops and restarts endpoint tasks so that exactly `snapshot`'s endpoints are
    /// scraped. Does nothing after shutdown.
    pub fn sync(&self, snapshot: &Snapshot) -> SyncReport {
        self.inner.sync(snapshot)
    }

    /// Spawns a task that syncs with `datastore` now and whenever its generation changes,
    /// checking once per scrape interval. It ends with the scraper.
    pub fn follow(&self, datastore: Arc<Datastore>) -> JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut last = None;
            let mut tick = tokio::time::interval(inner.shared.config.interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = inner.cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let snap = datastore.snapshot();
                if last != Some(snap.generation) {
                    last = Some(snap.generation);
                    inner.sync(&snap);
                }
            }
        })
    }

    /// Ids of the endpoints being scraped.
    pub fn endpoints(&self) -> Vec<EndpointId> {
        let mut ids: Vec<_> = self.inner.tasks.lock().keys().copied().collect();
        ids.sort();
        ids
    }

    /// Number of endpoints being scraped.
    pub fn len(&self) -> usize {
        self.inner.tasks.lock().len()
    }

    /// True if no endpoint is being scraped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scrapes `endpoint` once and returns the extraction, without publishing it.
    pub async fn scrape_once(&self, endpoint: &Endpoint) -> Result<Extraction, ScrapeError> {
        let shared = &self.inner.shared;
        let mapping = shared.engines.for_endpoint(endpoint.meta())?;
        shared.scrape(endpoint, &mapping, shared.uri(endpoint)?).await
    }

    /// Stops every task and waits for them to finish.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let tasks: Vec<Task> = self.inner.tasks.lock().drain().map(|(_, t)| t).collect();
        for t in tasks {
            let _ = t.handle.await;
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

/// Per-endpoint logging state: only transitions are logged.
#[derive(Default)]
struct LogState {
    failing: bool,
    field_failing: [bool; Field::ALL.len()],
}

impl LogState {
    fn observe(&mut self, name: &str, result: &Result<Extraction, ScrapeError>) {
        let failure = match result {
            Err(e) => Some(e.to_string()),
            Ok(x) if !x.is_fresh() => Some(match x.errors.first() {
                Some(e) => format!("no metric field parsed ({e})"),
                None => "no metric field parsed".to_owned(),
            }),
            Ok(_) => None,
        };
        match (&failure, self.failing) {
            (Some(err), false) => tracing::warn!(endpoint = name, error = %err, "metrics scrape failing"),
            (None, true) => tracing::info!(endpoint = name, "metrics scrape recovered"),
            _ => {}
        }
        self.failing = failure.is_some();
        let Ok(x) = result else { return };
        if !x.is_fresh() {
            return;
        }
        for (i, field) in Field::ALL.into_iter().enumerate() {
            let err = x.errors.iter().find(|e| e.field() == field);
            let Some(was) = self.field_failing.get_mut(i) else { continue };
            match (err, *was) {
                (Some(e), false) => tracing::info!(endpoint = name, error = %e, "metric field unavailable"),
                (None, true) if x.parsed.contains(&field) => {
                    tracing::info!(endpoint = name, field = %field, "metric field available again")
                }
                _ => {}
            }
            *was = err.is_some();
        }
    }
}

async fn run_endpoint(shared: Arc<Shared>, ep: Arc<Endpoint>, token: CancellationToken) {
    let name = ep.meta().name();
    let setup =
        shared.engines.for_endpoint(ep.meta()).map_err(ScrapeError::from).and_then(|m| Ok((m, shared.uri(&ep)?)));
    let (mapping, uri) = match setup {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(endpoint = %name, error = %e, "not scraping endpoint");
            token.cancelled().await;
            return;
        }
    };
    tracing::debug!(endpoint = %name, engine = %mapping.name, %uri, "scraping endpoint");
    let mut log = LogState::default();
    let mut tick = tokio::time::interval(shared.config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let models_uri = match shared.models_uri(&ep) {
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => {
            tracing::warn!(endpoint = %name, error = %e, "not polling the endpoint's model list");
            None
        }
        None => None,
    };
    let mut models = ModelsState::default();
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(uri) = &models_uri
            && models.due(shared.clock.now(), shared.config.models_interval)
        {
            let result = tokio::select! {
                biased;
                () = token.cancelled() => return,
                r = shared.models(uri.clone()) => r,
            };
            models.observe(&name, result);
        }
        let result = tokio::select! {
            biased;
            () = token.cancelled() => return,
            r = shared.scrape(&ep, &mapping, uri.clone()) => r,
        };
        log.observe(&name, &result);
        if let Ok(mut x) = result
            && x.is_fresh()
        {
            x.metrics.served_models = models.list.clone();
            ep.set_metrics(x.metrics);
        }
    }
}

/// An endpoint's model list as last polled, and when to poll it next.
#[derive(Default)]
struct ModelsState {
    /// The last list read; `None` until one is read, and again after a failed poll (a server that
    /// stops listing its models is not trusted with an old list).
    list: Option<Arc<BTreeSet<String>>>,
    next: Option<igw_core::time::Instant>,
    failing: bool,
}

impl ModelsState {
    fn due(&mut self, now: igw_core::time::Instant, every: Duration) -> bool {
        if self.next.is_some_and(|n| now < n) {
            return false;
        }
        self.next = Some(now.saturating_add(every));
        true
    }

    fn observe(&mut self, name: &str, result: Result<BTreeSet<String>, ScrapeError>) {
        match result {
            Ok(list) => {
                if self.failing {
                    tracing::info!(endpoint = name, "model list available again");
                }
                self.failing = false;
                if self.list.as_deref() != Some(&list) {
                    tracing::debug!(endpoint = name, models = ?list, "served models");
                    self.list = Some(Arc::new(list));
                }
            }
            Err(e) => {
                if !self.failing {
                    tracing::info!(endpoint = name, error = %e, "model list unavailable; routing without it");
                }
                self.failing = true;
                self.list = None;
            }
        }
    }
}
