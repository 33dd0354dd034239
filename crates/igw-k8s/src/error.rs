//! Errors of this crate.

/// A Kubernetes object that cannot be turned into datastore state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// A required field is missing or empty.
    #[error("{kind} {name}: {field} is missing")]
    Missing {
        /// Object kind.
        kind: &'static str,
        /// `namespace/name`.
        name: String,
        /// The field.
        field: &'static str,
    },
    /// A field has a value the API does not allow.
    #[error("{kind} {name}: {reason}")]
    Invalid {
        /// Object kind.
        kind: &'static str,
        /// `namespace/name`.
        name: String,
        /// What is wrong.
        reason: String,
    },
}
