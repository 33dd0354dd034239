//! igw's standalone data plane: an OpenAI-compatible HTTP reverse proxy (HTTP/1.1 and h2c) that
//! routes with the same request lifecycle and scheduler as `igw epp`.

pub mod admin;
pub mod body;
pub mod exposition;
pub mod gateway;
pub mod listener;
pub mod openai_error;
pub mod pools_admin;
pub mod routes;
pub mod upstream;
