//! Errors of the benchmark crate.

use thiserror::Error;

/// Anything that stops a scenario from running.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The scenario file is not valid YAML for the schema (the message names the line).
    #[error("scenario: {0}")]
    Scenario(String),
    /// No built-in scenario has this name.
    #[error("unknown scenario {0:?} (built-ins: {1})")]
    UnknownScenario(String, String),
    /// A policy name that is neither built in nor a readable EndpointPickerConfig file.
    #[error("policy {0:?}: {1}")]
    Policy(String, String),
    /// The simulator refused a configuration.
    #[error("simulator: {0}")]
    Sim(#[from] igw_sim::SimError),
    /// The ShareGPT file could not be read.
    #[error("sharegpt: {0}")]
    ShareGpt(String),
    /// A chart could not be encoded.
    #[error("chart: {0}")]
    Chart(String),
    /// The tokenizer file could not be read or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
