//! What `igw serve` and `igw epp` share at run time.
//!
//! - [`config`]: the gateway configuration file (`igw serve --config gateway.yaml`): strict
//!   decoding, validation, every scheduler built, errors naming the line.
//! - [`pools`]: the request core of a pool and its metric sources (used by both commands), the
//!   running pools of a configuration and their atomic replacement when the file changes.
//! - [`admin`], [`pools_admin`], [`exposition`]: the admin listener (`/metrics`, `/healthz`,
//!   `/readyz`, `/debug/endpoints`, `/debug/config`) of one pool (`igw epp`) or of a replaceable
//!   set of pools (`igw serve`), with request metrics of several pools merged into one page.
//! - [`serve`]: `igw serve` running: pools, the HTTP gateway of `igw-proxy`, the admin listener
//!   and the configuration watcher, started and stopped together.
//!
//! Errors are typed (`thiserror`); each one's message is complete (it includes its cause), so
//! printing it with `{}` says everything.

pub mod admin;
pub mod config;
pub mod exposition;
pub mod pools;
pub mod pools_admin;
pub mod serve;
