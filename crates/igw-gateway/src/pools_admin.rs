//! The admin listener of a multi-pool gateway whose pools are replaced on configuration reload.
//!
//! Same paths as [`crate::admin::Admin`]; `/metrics` carries every pool's gauges and the merged
//! request metrics, `/debug/endpoints` lists every pool's endpoints (each with its `pool`), and
//! `/debug/config` shows the configuration status (generation, last load error).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use igw_core::Datastore;
use tokio::net::TcpListener;

use crate::admin::{ADMIN_DRAIN, MetricsSource, endpoints_json, pool_metrics};
use crate::exposition::merge;

/// One pool as the admin listener sees it.
#[derive(Clone, Debug)]
pub struct AdminPool {
    /// Pool name (the `name` label of the `inference_pool_*` gauges).
    pub name: String,
    /// The pool's datastore.
    pub datastore: Arc<Datastore>,
    /// The pool's scheduler (its learned latency model, when it predicts, is shown per endpoint).
    pub scheduler: Option<Arc<igw_sched::Scheduler>>,
}

/// What the admin listener reports on; replaced whole on reload.
#[derive(Clone, Default)]
pub struct AdminView {
    /// The pools, in configuration order.
    pub pools: Vec<AdminPool>,
    /// Per-pool metric sources (request metrics), merged into one page.
    pub metrics: Vec<Arc<dyn MetricsSource>>,
}

impl std::fmt::Debug for AdminView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminView").field("pools", &self.pools).finish_non_exhaustive()
    }
}

/// Reports the configuration's state (`/debug/config`) and its gauges (`/metrics`).
pub trait ConfigStatus: Send + Sync + 'static {
    /// JSON for `/debug/config`.
    fn json(&self) -> serde_json::Value;
    /// Appends Prometheus text to `out`.
    fn render(&self, out: &mut String);
}

/// The admin listener over a replaceable set of pools.
pub struct PoolsAdmin {
    view: ArcSwap<AdminView>,
    staleness: Duration,
    status: Option<Arc<dyn ConfigStatus>>,
}

impl std::fmt::Debug for PoolsAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolsAdmin").field("view", &self.view.load()).finish_non_exhaustive()
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

impl PoolsAdmin {
    /// An admin listener over `view`; metrics older than `staleness` count as stale.
    pub fn new(view: AdminView, staleness: Duration, status: Option<Arc<dyn ConfigStatus>>) -> Self {
        PoolsAdmin { view: ArcSwap::from_pointee(view), staleness, status }
    }

    /// Replaces the pools reported on.
    pub fn set_view(&self, view: AdminView) {
        self.view.store(Arc::new(view));
    }

    /// The pools reported on.
    pub fn view(&self) -> Arc<AdminView> {
        self.view.load_full()
    }

    /// `/metrics`: every pool's gauges, the merged request metrics, the configuration gauges.
    pub fn metrics_text(&self) -> String {
        let view = self.view.load_full();
        let mut pages: Vec<String> =
            view.pools.iter().map(|p| pool_metrics(&p.name, &p.datastore.snapshot(), self.staleness)).collect();
        for src in &view.metrics {
            let mut out = String::new();
            src.render(&mut out);
            pages.push(out);
        }
        let mut out = merge(&pages);
        if let Some(s) = &self.status {
            s.render(&mut out);
        }
        out
    }

    /// `/debug/endpoints`: every pool's endpoints.
    pub fn endpoints_json(&self) -> serde_json::Value {
        let view = self.view.load_full();
        let mut pools = Vec::new();
        let mut all = Vec::new();
        for p in &view.pools {
            let snap = p.datastore.snapshot();
            let eps = endpoints_json(&p.name, &snap, self.staleness, p.scheduler.as_deref());
            let model = p.scheduler.as_deref().and_then(igw_sched::Scheduler::latency_model).map(|m| m.pool_view());
            pools.push(serde_json::json!({
                "name": p.name,
                "generation": snap.generation,
                "endpoints": eps.len(),
                "latency_model": model,
            }));
            all.extend(eps);
        }
        serde_json::json!({"pools": pools, "endpoints": all})
    }

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
        Ok(match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => {
                let view = self.view.load_full();
                if view.pools.iter().any(|p| !p.datastore.snapshot().endpoints.is_empty()) {
                    text(StatusCode::OK, "text/plain", "ready\n".into())
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no endpoints\n".into())
                }
            }
            "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics_text()),
            "/debug/endpoints" => text(StatusCode::OK, "application/json", self.endpoints_json().to_string()),
            "/debug/config" => match &self.status {
                Some(s) => text(StatusCode::OK, "application/json", s.json().to_string()),
                None => text(StatusCode::NOT_FOUND, "text/plain", "no configuration file\n".into()),
            },
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use igw_core::EndpointMeta;

    struct Fixed(&'static str);
    impl MetricsSource for Fixed {
        fn render(&self, out: &mut String) {
            out.push_str(self.0);
        }
    }

    #[test]
    fn every_pool_is_reported_and_request_metrics_merge() {
        let pool = |name: &str, addr: &str| AdminPool {
            scheduler: None,
            name: name.into(),
            datastore: Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr(addr).unwrap()])),
        };
        let src = "# HELP r_total [ALPHA] R.\n# TYPE r_total counter\nr_total 1\n";
        let admin = PoolsAdmin::new(
            AdminView {
                pools: vec![pool("a", "10.0.0.1:80"), pool("b", "10.0.0.2:80")],
                metrics: vec![Arc::new(Fixed(src)), Arc::new(Fixed(src))],
            },
            Duration::from_secs(1),
            None,
        );
        let m = admin.metrics_text();
        assert!(m.contains("inference_pool_ready_pods{name=\"a\"} 0\n"), "{m}");
        assert!(m.contains("inference_pool_ready_pods{name=\"b\"} 0\n"));
        assert_eq!(m.matches("# TYPE inference_pool_ready_pods gauge").count(), 1);
        assert!(m.contains("r_total 2\n"));
        let d = admin.endpoints_json();
        assert_eq!(d["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(d["endpoints"][1]["pool"], "b");
        assert_eq!(d["endpoints"][1]["stale"], true, "never scraped");
        admin.set_view(AdminView::default());
        assert_eq!(admin.endpoints_json()["endpoints"].as_array().unwrap().len(), 0);
    }
}
