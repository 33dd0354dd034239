//! Leader election on a `coordination.k8s.io/v1` Lease, as upstream's EPP does with
//! `--ha-enable-leader-election`: every replica serves, and readiness follows leadership, so
//! the gateway sends traffic to the leader only.
//!
//! [`decide`] is the sans-IO rule (time passed in); [`LeaderElector`] performs one
//! get-then-create-or-replace round per call with optimistic concurrency (`resourceVersion`),
//! so two replicas racing for an expired lease cannot both win: the loser gets 409 Conflict.
//!
//! Active-active mode is simply not electing: every replica is ready and serves with its own
//! datastore and in-flight counts (see docs/kubernetes.md for the trade-off).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Who competes for which Lease, and how long a lease lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name (e.g. `<pool>-epp-leader`).
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Upstream's timings (controller-runtime defaults): 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it or it expired: take it over.
    Acquire,
    /// Someone else holds a valid lease.
    Follow(String),
}

/// The election rule for `lease` as found at `now`.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else { return Decision::Create };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let Some(renewed) = spec.renew_time.or(spec.acquire_time) else { return Decision::Acquire };
    let valid_for = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    if renewed.0.saturating_add(valid_for).is_ok_and(|until| until > now) {
        Decision::Follow(holder)
    } else {
        Decision::Acquire
    }
}

/// The Lease to write for `decision` (not [`Decision::Follow`]).
pub fn desired(existing: Option<&Lease>, config: &LeaseConfig, decision: &Decision, now: Timestamp) -> Lease {
    let mut lease = existing.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    let secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    match decision {
        Decision::Renew => {}
        Decision::Create => {
            spec = LeaseSpec { acquire_time: Some(MicroTime(now)), lease_transitions: Some(0), ..LeaseSpec::default() };
        }
        Decision::Acquire | Decision::Follow(_) => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    lease
}

/// Runs the election against the API server.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("config", &self.config).finish()
    }
}

/// Upstream's Lease name for a pool: `epp-<namespace>-<pool>.gateway-api-inference-extension.sigs.k8s.io`.
pub fn lease_name(namespace: &str, pool: &str) -> String {
    format!("epp-{namespace}-{pool}.gateway-api-inference-extension.sigs.k8s.io")
}

/// Connects to the cluster (in-cluster config or kubeconfig) and runs the election for `config`
/// in a task; the receiver says whether this replica leads (false until it first wins).
pub async fn start(config: LeaseConfig) -> Result<watch::Receiver<bool>, kube::Error> {
    let client = Client::try_default().await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(LeaderElector::new(client, config).run(tx));
    Ok(rx)
}

impl LeaderElector {
    /// An elector for `config` using `client`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector { api: Api::namespaced(client, &config.namespace), config }
    }

    /// One round at `now`: returns whether this replica holds the lease afterwards. A write
    /// conflict (another replica won the race) is `Ok(false)`.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let existing = self.api.get_opt(&self.config.name).await?;
        let decision = decide(existing.as_ref(), &self.config.identity, now);
        let result = match &decision {
            Decision::Follow(holder) => {
                tracing::debug!(%holder, "following the leader");
                return Ok(false);
            }
            Decision::Create => {
                self.api.create(&PostParams::default(), &desired(None, &self.config, &decision, now)).await
            }
            Decision::Renew | Decision::Acquire => {
                let lease = desired(existing.as_ref(), &self.config, &decision, now);
                self.api.replace(&self.config.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Elects forever, publishing leadership on `leader`. A leader that cannot renew for
    /// `renew_deadline` steps down.
    pub async fn run(self, leader: watch::Sender<bool>) {
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let now = Timestamp::now();
            let leading = match self.try_acquire_or_renew(now).await {
                Ok(true) => {
                    last_renewed = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => {
                    last_renewed = None;
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.config.name, "lease round failed");
                    last_renewed.is_some_and(|t| t.elapsed() < self.config.renew_deadline)
                }
            };
            if leader.send_replace(leading) != leading {
                tracing::info!(leading, identity = %self.config.identity, "leadership changed");
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }
}
