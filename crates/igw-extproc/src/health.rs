//! gRPC health (`grpc.health.v1.Health`): the health port, and the same service on the
//! ext_proc port (Envoy health-checks the EPP cluster with service name
//! `envoy.service.ext_proc.v3.ExternalProcessor`).

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::SERVICE_NAME as EXT_PROC_SERVICE;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// Service name the Kubernetes probes of a single-replica EPP use.
pub const INFERENCE_EXTENSION: &str = "inference-extension";
/// Liveness service name.
pub const LIVENESS: &str = "liveness";
/// Readiness service name.
pub const READINESS: &str = "readiness";

/// Names that follow readiness; liveness is always serving.
const READY_NAMES: [&str; 4] = ["", READINESS, INFERENCE_EXTENSION, EXT_PROC_SERVICE];

/// The health state shared by both ports. Cheap to clone; every clone reports the same state.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// A health state: `liveness` serving, the others (`""`, `readiness`, `inference-extension`,
    /// the ext_proc service) serving iff `ready`.
    pub async fn new(ready: bool) -> Self {
        let h = Health { reporter: HealthReporter::new() };
        h.reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
        h.set_ready(ready).await;
        h
    }

    /// Marks the picker ready (pool synced) or not.
    pub async fn set_ready(&self, ready: bool) {
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in READY_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// The gRPC service answering for this state.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }
}
