//! The error type of the text crate; each variant says what was wrong.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = TextError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A sampling parameter or logits row that cannot be used.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
