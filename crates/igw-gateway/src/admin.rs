//! The admin listener of one pool (`igw epp`'s metrics port): `/healthz`, `/readyz`, `/metrics`,
//! `/debug/endpoints`, and the pieces [`crate::pools_admin`] builds its pages from: the
//! `inference_pool_*` gauges ([`pool_metrics`]) and the per-endpoint JSON ([`endpoints_json`]).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use igw_core::time::{Clock, process_clock};
use igw_core::{Datastore, Snapshot};
use tokio::net::TcpListener;

/// How long an admin listener lets open connections finish once it is told to stop.
pub const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// Where extra metric text comes from (the request path's counters and histograms).
pub trait MetricsSource: Send + Sync + 'static {
    /// Appends Prometheus text exposition to `out`.
    fn render(&self, out: &mut String);
}

/// What the admin listener reports on.
pub struct Admin {
    /// Pool name used in the `inference_pool_*` gauges.
    pub pool_name: String,
    /// The pool's datastore.
    pub datastore: Arc<Datastore>,
    /// Metrics older than this are stale (excluded from the pool averages, flagged in debug).
    pub staleness: Duration,
    /// More metrics to append to `/metrics`.
    pub extra: Vec<Arc<dyn MetricsSource>>,
    /// The pool's scheduler (its learned latency model, when it predicts, is shown per endpoint).
    pub scheduler: Option<Arc<igw_sched::Scheduler>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("pool_name", &self.pool_name).finish_non_exhaustive()
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// Escapes a Prometheus label value.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Admin {
    /// Serves the admin endpoints on `listener` (HTTP/1.1 and h2c) until `shutdown` resolves, then
    /// lets open connections finish for up to [`ADMIN_DRAIN`].
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        igw_proxy::listener::serve(listener, move |req| self.clone().handle(req), shutdown, ADMIN_DRAIN).await;
    }

    /// Serves one admin request.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.method() != Method::GET {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()));
        }
        let snap = self.datastore.snapshot();
        Ok(match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => {
                if snap.endpoints.is_empty() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no endpoints\n".into())
                } else {
                    text(StatusCode::OK, "text/plain", "ready\n".into())
                }
            }
            "/metrics" => {
                let mut out = self.pool_metrics(&snap);
                for src in &self.extra {
                    src.render(&mut out);
                }
                text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", out)
            }
            "/debug/endpoints" => text(StatusCode::OK, "application/json", self.debug_endpoints(&snap)),
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        })
    }

    /// The `inference_pool_*` gauges, computed over endpoints with fresh metrics.
    pub fn pool_metrics(&self, snap: &Snapshot) -> String {
        pool_metrics(&self.pool_name, snap, self.staleness)
    }

    /// JSON: each endpoint's metrics, in-flight load and staleness.
    pub fn debug_endpoints(&self, snap: &Snapshot) -> String {
        serde_json::json!({
            "pool": self.pool_name,
            "generation": snap.generation,
            "endpoints": endpoints_json(&self.pool_name, snap, self.staleness, self.scheduler.as_deref()),
            "latency_model": self.scheduler.as_deref().and_then(igw_sched::Scheduler::latency_model).map(|m| m.pool_view()),
        })
        .to_string()
    }
}

/// The `inference_pool_*` gauges of one pool, computed over its endpoints with fresh metrics.
pub fn pool_metrics(pool_name: &str, snap: &Snapshot, staleness: Duration) -> String {
    let mut out = String::new();
    write_pool_metrics(&mut out, pool_name, snap, staleness);
    out
}

fn write_pool_metrics(out: &mut String, pool_name: &str, snap: &Snapshot, staleness: Duration) {
    let now = process_clock().now();
    let fresh: Vec<_> =
        snap.endpoints.iter().map(|e| (e, e.metrics())).filter(|(_, m)| !m.is_stale(now, staleness)).collect();
    let n = fresh.len();
    let avg = |f: &dyn Fn(&igw_core::EndpointMetrics) -> f64| {
        if n == 0 { 0.0 } else { fresh.iter().map(|(_, m)| f(m)).sum::<f64>() / n as f64 }
    };
    let pool = escape_label(pool_name);
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} [ALPHA] {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{name=\"{pool}\"}} {value}");
    };
    gauge(
        "inference_pool_average_kv_cache_utilization",
        "The average kv cache utilization for an inference server pool.",
        avg(&|m| m.kv_usage),
    );
    gauge(
        "inference_pool_average_queue_size",
        "The average number of requests pending in the model server queue.",
        avg(&|m| f64::from(m.waiting)),
    );
    gauge(
        "inference_pool_average_running_requests",
        "The average number of running requests across model servers in the pool.",
        avg(&|m| f64::from(m.running)),
    );
    gauge("inference_pool_ready_pods", "The number of ready pods in the inference server pool.", n as f64);
    let _ = writeln!(
        out,
        "# HELP inference_pool_per_pod_queue_size [ALPHA] The total number of requests pending in the model server queue for each underlying pod."
    );
    let _ = writeln!(out, "# TYPE inference_pool_per_pod_queue_size gauge");
    for e in &snap.endpoints {
        let _ = writeln!(
            out,
            "inference_pool_per_pod_queue_size{{model_server_pod=\"{}\",name=\"{pool}\"}} {}",
            escape_label(&e.meta().name()),
            e.metrics().waiting
        );
    }
}

/// One JSON object per endpoint of `snap`: metrics, in-flight load, staleness, pool, and what the
/// scheduler's latency model learned of it (when `scheduler` predicts).
pub fn endpoints_json(
    pool_name: &str,
    snap: &Snapshot,
    staleness: Duration,
    scheduler: Option<&igw_sched::Scheduler>,
) -> Vec<serde_json::Value> {
    let now = process_clock().now();
    let model = scheduler.and_then(igw_sched::Scheduler::latency_model);
    snap.endpoints
        .iter()
        .map(|e| {
            let m = e.metrics();
            serde_json::json!({
                "pool": pool_name,
                "id": e.id().0,
                "name": e.meta().name(),
                "address": e.address().to_string(),
                "engine": e.meta().engine_label(),
                "accelerator": e.meta().accelerator(),
                "cost_per_hour": e.meta().cost_per_hour(),
                "waiting": m.waiting,
                "running": m.running,
                "kv_usage": m.kv_usage,
                "active_adapters": m.active_adapters,
                "waiting_adapters": m.waiting_adapters,
                "served_models": m.served_models.as_deref(),
                "max_adapters": m.max_adapters,
                "cache_block_size": m.cache_block_size,
                "cache_num_blocks": m.cache_num_blocks,
                "metrics_age_ms": m.age(now).map(|a| a.as_secs_f64() * 1e3),
                "stale": m.is_stale(now, staleness),
                "in_flight_requests": e.in_flight().requests(),
                "in_flight_tokens": e.in_flight().tokens(),
                "latency_model": model.and_then(|m| m.view(e.id())),
            })
        })
        .collect()
}
