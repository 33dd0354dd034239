//! Errors of the benchmark crate.
//!
//! [`BenchError`] is what stops a scenario, a workload or a report; the real-time drivers add
//! their own ([`crate::compare::CompareError`], [`crate::load::extproc::ExtprocError`]). Causes
//! are kept as [`source`](std::error::Error::source)s; [`chain`] writes an error with its causes
//! on one line, as the command line prints it.

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
    /// A file operation failed; `context` says which (`reading PATH`, `writing PATH`).
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    /// An [`Io`](BenchError::Io) error: `source` while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io { context: context.into(), source }
    }
}

/// `e` and its causes on one line, separated by `": "` (what `anyhow` prints for `{:#}`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_written_on_one_line() {
        let e = BenchError::io("reading x.json", std::io::Error::other("disk on fire"));
        assert_eq!(e.to_string(), "reading x.json");
        assert_eq!(chain(&e), "reading x.json: disk on fire");
        assert_eq!(chain(&BenchError::Chart("too wide".into())), "chart: too wide");
    }
}
