//! Real-time load generators, on the wall clock against real processes.
//!
//! * [`http`]: the open-loop OpenAI HTTP load generator (one QPS step of streamed completions,
//!   every request accounted for), shared by `igw bench run` and `igw bench compare`;
//! * [`sse`]: the SSE framing and the client-side token timer it uses;
//! * [`run`]: `igw bench run`, a QPS ladder against one URL and its Markdown report;
//! * [`extproc`]: `igw bench extproc`, an Envoy-like ext_proc gRPC stream driver against a real
//!   `igw epp`.

pub mod extproc;
pub mod http;
pub mod run;
pub mod sse;
