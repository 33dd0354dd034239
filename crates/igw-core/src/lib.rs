//! Domain types shared by every igw crate, and the datastore.
//!
//! Nothing in this crate performs I/O. Time is passed in as [`Instant`] values so that the same
//! code runs on the wall clock in production and on a virtual clock in the simulator.

pub mod datastore;
pub mod endpoint;
pub mod error;
pub mod metrics;
pub mod objective;
pub mod request;
pub mod stats;
pub mod time;
pub mod units;

pub use datastore::{Datastore, Snapshot};
pub use endpoint::{Endpoint, EndpointId, EndpointKey, EndpointMeta, InFlight, Labels};
pub use error::CoreError;
pub use metrics::EndpointMetrics;
pub use objective::{InferenceObjective, ModelRewrite, ObjectRef, ObjectiveGoals, Placement, RewriteRule, TargetModel};
pub use request::{ApiKind, ChatMessage, InferenceRequest, Priority, Prompt};
pub use time::Instant;
