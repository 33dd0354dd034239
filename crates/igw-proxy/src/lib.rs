//! igw's standalone data plane: an OpenAI-compatible HTTP reverse proxy (HTTP/1.1 and h2c) that
//! routes with the same request lifecycle and scheduler as `igw epp`.
//!
//! The proxy driver only: the request handler ([`gateway`]), its routing table ([`routes`]), the
//! upstream client ([`upstream`]), OpenAI-style errors ([`openai_error`]), and the HTTP listener
//! ([`listener`]) that it and the admin listener of `igw-gateway` serve on.

pub mod body;
pub mod gateway;
pub mod listener;
pub mod openai_error;
pub mod routes;
pub mod upstream;
