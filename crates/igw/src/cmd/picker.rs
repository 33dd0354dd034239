//! Builds the picker every data plane routes with.

use std::sync::Arc;

use igw_core::Datastore;
use igw_proxy::admin::MetricsSource;
use igw_request::Director;
use igw_request::metrics::RequestMetrics;
use igw_sched::Scheduler;

/// The Director for `datastore` deciding with `scheduler`; with flow control in front of it
/// (`flow_control`), the legacy shedding of sheddable requests is off, as upstream.
pub fn director(datastore: &Arc<Datastore>, scheduler: Scheduler, flow_control: bool) -> Arc<Director> {
    let d = Director::new(datastore.clone(), Arc::new(scheduler), super::seed());
    Arc::new(if flow_control { d.without_legacy_shedding() } else { d })
}

/// Exposes flow control's metrics on the admin listener.
pub struct FlowMetricsSource(pub Arc<igw_request::flow_gate::FlowMetrics>);

impl MetricsSource for FlowMetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}

/// Exposes the Director's request metrics on the admin listener.
pub struct RequestMetricsSource(pub Arc<RequestMetrics>);

impl MetricsSource for RequestMetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}
