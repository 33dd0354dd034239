//! Builds the picker every data plane routes with.

use std::sync::Arc;

use anyhow::Context as _;
use igw_core::Datastore;
use igw_proxy::admin::MetricsSource;
use igw_request::Director;
use igw_request::metrics::RequestMetrics;
use igw_sched::Scheduler;

/// The Director for `datastore`, deciding with the named policy.
pub fn build(datastore: &Arc<Datastore>, policy: &str) -> anyhow::Result<Arc<Director>> {
    let scheduler = Scheduler::from_policy(policy).context("--policy")?;
    Ok(Arc::new(Director::new(datastore.clone(), Arc::new(scheduler), super::seed())))
}

/// The Director for `datastore`, deciding with the scheduler an EndpointPickerConfig describes.
pub fn from_config(datastore: &Arc<Datastore>, yaml: &str) -> anyhow::Result<Arc<Director>> {
    let scheduler = igw_sched::config::scheduler_from_yaml(yaml)?;
    Ok(Arc::new(Director::new(datastore.clone(), Arc::new(scheduler), super::seed())))
}

/// Exposes the Director's request metrics on the admin listener.
pub struct RequestMetricsSource(pub Arc<RequestMetrics>);

impl MetricsSource for RequestMetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}
