//! Errors of the simulator library.

/// What can go wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// No built-in profile has this name.
    #[error("unknown profile `{0}` (known: llama2-7b-h100, llama2-70b-tp4-h100)")]
    UnknownProfile(String),
    /// A profile field is out of range.
    #[error("invalid profile: {0}")]
    InvalidProfile(String),
    /// A request id is already in the engine.
    #[error("request {0} is already in the engine")]
    DuplicateRequest(u64),
    /// The request can never be served by this engine.
    #[error("request rejected: {0}")]
    Rejected(String),
    /// A fleet configuration problem.
    #[error("invalid fleet configuration: {0}")]
    Config(String),
    /// A socket operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
