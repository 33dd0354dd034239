//! The request lifecycle pieces every igw adapter shares, sans-IO.
//!
//! The Envoy ext_proc server, the standalone HTTP proxy and the discrete-event simulator all call
//! these functions; none of them performs I/O, reads a clock or owns a random source. Time and
//! random draws are passed in, so the same code runs in production and in virtual time.
//!
//! Call order for one request:
//!
//! 1. request headers → [`RequestHead::new`] (request id, control headers, API path);
//! 2. body chunks → [`BodyBuffer::push`];
//! 3. end of body → [`RequestHead::prepare`]: parse once ([`parse_body`]), rewrite the model
//!    ([`resolve_target_model`]), resolve priority, build the [`igw_core::InferenceRequest`], the
//!    body to forward and the [`HeaderMutations`]; a body-less request yields [`Prepared::NoBody`];
//! 4. candidates ([`candidates`], honouring an [`EndpointSubset`]) → admission and scheduling (the
//!    scheduler's job) → [`HeaderMutations::set_destination`];
//! 5. response headers and body → [`ResponseTracker`] (usage, streaming, first token, model-server
//!    errors) and [`ModelNameRestorer`] (the client's model name written back).
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
pub use subset::EndpointSubset;
pub use usage::{ResponseSummary, ResponseTracker, SseUsageParser, Usage, usage_from_json, usage_from_value};
