//! igw's Envoy ext_proc adapter: the Endpoint Picker (EPP) side of
//! `envoy.service.ext_proc.v3.ExternalProcessor/Process`.
//!
//! One gRPC stream is one HTTP request. [`StreamState`] is the per-stream state machine (no I/O);
//! [`serve`] runs it behind tonic on pre-bound listeners, with TLS ([`tls`]) and gRPC health
//! ([`Health`]). Policy lives behind the [`Picker`] port, which the Director implements;
//! [`RandomPicker`] and [`FixedPicker`] are stand-ins over a datastore.
//!
//! Wire behaviour follows `../shared/spec/epp-protocol.md` §1: destination header and
//! `envoy.lb` metadata with the identical string, 62,000-byte streamed chunks, errors as
//! `ImmediateResponse` with `inference error: <Code> - <msg>`.

pub mod bbr;
mod conn;
pub mod health;
pub mod lifecycle;
pub mod metadata;
#[cfg(feature = "otel")]
pub mod otel;
pub mod picker;
pub mod server;
pub mod stream;
pub mod tls;

pub use health::Health;
pub use lifecycle::Lifecycle;
pub use picker::{FixedPicker, PickFuture, Picked, Picker, RandomPicker};
pub use server::{ExtProcService, Listeners, ServeError, ServerConfig, serve};
pub use stream::{PendingPick, Step, StreamConfig, StreamState};
pub use tls::{TlsConfig, TlsError};
