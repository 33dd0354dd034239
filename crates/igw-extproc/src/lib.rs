//! igw's Envoy ext_proc adapter: the Endpoint Picker (EPP) side of
//! `envoy.service.ext_proc.v3.ExternalProcessor/Process`.
//!
//! One gRPC stream is one HTTP request. [`StreamState`] is the per-stream state machine (no I/O);
//! [`serve`] runs it behind tonic on pre-bound listeners, with TLS ([`tls`]) and gRPC health
//! ([`Health`]). Every request runs through igw's one request core ([`igw_request::Pool`]), the
//! same the standalone proxy and the simulator drive.
//!
//! Wire behaviour follows `../shared/spec/epp-protocol.md` §1: destination header and
//! `envoy.lb` metadata with the identical string, 62,000-byte streamed chunks, errors as
//! `ImmediateResponse` with `inference error: <Code> - <msg>`.

pub mod bbr;
mod conn;
pub mod health;
pub mod metadata;
#[cfg(feature = "otel")]
pub mod otel;
pub mod server;
pub mod stream;
pub mod tls;

pub use health::Health;
pub use server::{ExtProcService, Listeners, ServeError, ServerConfig, serve};
pub use stream::{PendingPick, Step, StreamConfig, StreamState};
pub use tls::{TlsConfig, TlsError};
