//! Builds the request core every data plane routes with.

use std::sync::Arc;

use igw_core::Datastore;
use igw_proxy::admin::MetricsSource;
use igw_request::metrics::RequestMetrics;
use igw_request::{Pool, PoolCore};
use igw_sched::Scheduler;
use igw_sched::flow::FlowConfig;

/// The pool `name` over `datastore`, deciding with `scheduler` and returning up to
/// `max_endpoints` per decision; with `flow` the requests wait in flow control (and legacy
/// shedding of sheddable requests is off, as upstream), on the process clock.
pub fn pool(
    name: &str,
    datastore: &Arc<Datastore>,
    scheduler: Scheduler,
    flow: Option<FlowConfig>,
    max_endpoints: usize,
) -> anyhow::Result<Arc<Pool>> {
    let clock = Arc::new(*igw_core::time::process_clock());
    let mut core = PoolCore::new(name, datastore.clone(), Arc::new(scheduler))
        .with_seed(super::seed())
        .with_max_endpoints(max_endpoints)
        .with_timer(clock.clone());
    if let Some(fc) = flow {
        core = core.with_flow_control(fc).map_err(|e| anyhow::anyhow!("flow control: {e}"))?;
    }
    Ok(Pool::new(Arc::new(core), clock))
}

/// Exposes flow control's metrics on the admin listener.
pub struct FlowMetricsSource(pub Arc<igw_request::flow_gate::FlowMetrics>);

impl MetricsSource for FlowMetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}

/// Exposes the core's request metrics on the admin listener.
pub struct RequestMetricsSource(pub Arc<RequestMetrics>);

impl MetricsSource for RequestMetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}

/// The admin listener's metric sources of `pool`: its request metrics and, with flow control,
/// flow control's.
pub fn metric_sources(pool: &Pool) -> Vec<Arc<dyn MetricsSource>> {
    let mut v: Vec<Arc<dyn MetricsSource>> = vec![Arc::new(RequestMetricsSource(pool.core().metrics().clone()))];
    if pool.gate().is_some() {
        v.push(Arc::new(FlowMetricsSource(pool.core().flow_metrics().clone())));
    }
    v
}
