//! igw-k8s's tests, in one binary (each test binary links kube and k8s-openapi separately, which
//! is slow on the 2-core CI machine).

mod conformance;
mod crds;
mod lease;
mod manifests;
mod readiness;
mod reconcile;
mod watch;
