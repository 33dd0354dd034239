//! igw on Kubernetes: the GIE API types (kube derive + schemars), their conversion into the
//! datastore's types, the CRDs `igw crds` prints, a sans-IO reconciler that turns watch events
//! into datastore writes, the watchers around it, Lease leader election, and the install
//! manifests `igw manifests` prints.

pub mod api;
pub mod convert;
pub mod crds;
pub mod error;
pub mod lease;
pub mod legacy;
pub mod manifests;
pub mod readiness;
pub mod reconcile;
pub mod shared;
pub mod watch;

pub use error::ConvertError;
