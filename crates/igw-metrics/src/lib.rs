//! igw's data layer: reading model servers' Prometheus `/metrics` pages into
//! [`igw_core::EndpointMetrics`].
//!
//! - [`text`]: a hand-written, panic-free Prometheus text-format parser (full and filtered).
//! - [`spec`]: metric specs (`name{label=value}` selectors) and the selection rules.
//! - [`engine`]: per-engine mappings (vLLM, SGLang, trtllm-serve, Triton) and their config.
//! - [`extract`](mod@extract): applying a mapping to a page, with per-field errors and partial results.
//! - [`models`]: a server's OpenAI model list (`/v1/models`): the models and LoRA adapters it serves.
//! - [`scrape`]: the per-endpoint Tokio scrape loop that follows a [`igw_core::Datastore`]; it also
//!   polls each endpoint's model list, slower, into [`igw_core::EndpointMetrics::served_models`].
//!
//! Behaviour follows upstream's `metrics-data-source` + `core-metrics-extractor`
//! (`../shared/spec/scheduler.md` §1).

pub mod engine;
pub mod extract;
pub mod models;
pub mod scrape;
pub mod spec;
pub mod text;

pub use engine::{ConfigError, EngineConfig, EngineMapping, EngineRegistry, ExtractorConfig, UnknownEngine};
pub use extract::{Extraction, Field, FieldError, extract, extract_from_bytes};
pub use models::{ModelsError, served_models};
pub use scrape::{ScrapeConfig, ScrapeError, Scraper, SyncReport};
pub use spec::{MetricSpec, SpecError};
pub use text::{Exposition, Family, LabelSet, LineError, LineErrorKind, MetricType, Sample, parse, parse_filtered};
