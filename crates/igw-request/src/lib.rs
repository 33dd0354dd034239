//! igw's request core: the whole life of a request in one pool, sans-IO, and the pieces it is
//! made of. The Envoy ext_proc driver (igw-extproc), the HTTP proxy driver (igw-proxy) and the
//! discrete-event simulator (igw-bench) all drive [`PoolCore`]; what the simulator measures is what
//! production runs (`crates/igw-bench/tests/same_decisions.rs` checks all three decide alike).
//!
//! Call order for one request (see [`core`] for the details):
//!
//! 1. request headers → [`PoolCore::head`] (request id from the core's seeded draws, control
//!    headers, API path); body chunks → [`BodyBuffer::push`];
//! 2. end of body → [`PoolCore::prepare`]: parse once ([`parse_body`]), rewrite the model
//!    ([`resolve_target_model`]), resolve the objective's priority, build the
//!    [`igw_core::InferenceRequest`], the body to forward and the [`HeaderMutations`];
//! 3. [`PoolCore::admit`] (hooks, flow control) → [`Request::decide`] (one snapshot, the primary
//!    and ordered fallbacks) → [`Request::attempt`] per endpoint tried, [`Request::attempt_failed`]
//!    when it was not served, [`Request::served_by`] when the gateway reports another endpoint;
//! 4. response headers and body → [`ResponseTracker`] (usage, streaming, first token, model-server
//!    errors), [`ModelNameRestorer`] (the client's model name written back), [`Request::first_byte`]
//!    and [`Request::end`] with the summary. Dropping a [`Request`] ends it exactly once.
//!
//! Nothing in the core performs I/O, reads a clock or owns an unseeded random source: time is
//! passed in and draws come from the core's seed. The async shell the live drivers hold is
//! [`Pool`] with its [`FlowGate`] ([`flow_gate`]), the only module that uses tokio.
//!
//! Errors are [`RequestError`]s carrying upstream's codes and their HTTP mapping.

pub mod body;
pub mod core;
pub mod error;
pub mod flow_gate;
pub mod headers;
pub mod metrics;
pub mod parse;
pub mod request;
pub mod rewrite;
pub mod sse;
pub mod subset;
pub mod usage;

pub use crate::core::{Admission, Ended, Hooks, Leg, PoolCore, QueueId, Request, Ticket};
pub use body::{BodyBuffer, BodyError, DEFAULT_MAX_BODY_BYTES, MAX_STREAMED_CHUNK_BYTES, streamed_chunks};
pub use error::{ErrorCode, RequestError};
pub use flow_gate::{FlowGate, Pool};
pub use headers::{ControlHeaders, HeaderMutations, format_destination, generate_request_id};
pub use parse::{ParsedBody, parse_body, parse_request_body};
pub use request::{
    Draws, NoBodyRequest, Prepared, PreparedRequest, RequestHead, build_request, candidates, pick_random_endpoint,
};
pub use rewrite::{ModelNameRestorer, ModelRewriteDecision, RewriteSource, resolve_target_model, rewrite_model_back};
pub use sse::{SseData, SseFramer};
pub use subset::EndpointSubset;
pub use usage::{ResponseSummary, ResponseTracker, SseUsageParser, Usage, usage_from_json, usage_from_value};
