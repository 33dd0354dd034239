//! Errors of the core types.

use thiserror::Error;

/// What can go wrong when building or updating core objects.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CoreError {
    /// An endpoint address could not be parsed as `ip:port`.
    #[error("invalid endpoint address {0:?}: expected ip:port")]
    InvalidAddress(String),
    /// An object failed validation.
    #[error("invalid {kind} {name:?}: {reason}")]
    Invalid {
        /// Kind of object (e.g. "InferenceModelRewrite").
        kind: &'static str,
        /// Its name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
}
