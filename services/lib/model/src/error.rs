//! The one error type of the model crate. Every variant names what was wrong and where, so a
//! bad checkpoint or dataset is diagnosable from the message alone.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Everything that can go wrong in model, checkpoint, tokenizer and data code.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    #[error("invalid shard span: {0}")]
    InvalidSpan(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("checkpoint {path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("checkpoint {path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },
    #[error(
        "checkpoint {path}: tensor `{name}` has dtype {actual}, expected one of f32, bf16, f16"
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        actual: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("dataset: {0}")]
    Data(String),
    #[error("training: {0}")]
    Training(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<neuroshard_text::TextError> for ModelError {
    fn from(error: neuroshard_text::TextError) -> Self {
        match error {
            neuroshard_text::TextError::InvalidInput(message) => Self::InvalidInput(message),
            neuroshard_text::TextError::Tokenizer(message) => Self::Tokenizer(message),
            neuroshard_text::TextError::Io { path, source } => Self::Io { path, source },
        }
    }
}

impl From<neuroshard_common::Error> for ModelError {
    fn from(error: neuroshard_common::Error) -> Self {
        Self::InvalidConfig(error.message)
    }
}

impl ModelError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a JSON error with the path of the file it came from.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            source,
        }
    }
}

impl ModelError {
    /// Where this failure falls in the one taxonomy: what a caller sent or configured wrong
    /// is theirs to fix, a missing or unreadable file is a precondition of the node, and only
    /// libtorch failures are ours.
    pub fn kind(&self) -> neuroshard_common::ErrorKind {
        use neuroshard_common::ErrorKind;
        match self {
            Self::InvalidConfig(_) | Self::InvalidSpan(_) | Self::InvalidInput(_) => {
                ErrorKind::InvalidArgument
            }
            Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Self::Io { .. }
            | Self::Json { .. }
            | Self::Checkpoint { .. }
            | Self::MissingTensor { .. }
            | Self::ShapeMismatch { .. }
            | Self::UnsupportedDtype { .. }
            | Self::Tokenizer(_)
            | Self::Data(_) => ErrorKind::FailedPrecondition,
            Self::Training(_) | Self::Torch(_) => ErrorKind::Internal,
        }
    }
}

impl From<ModelError> for neuroshard_common::Error {
    fn from(error: ModelError) -> Self {
        Self::new(error.kind(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_common::ErrorKind;

    #[test]
    fn model_errors_keep_their_kind_in_the_taxonomy() {
        let shape: neuroshard_common::Error =
            ModelError::InvalidInput("hidden [1, 3]".into()).into();
        assert_eq!(shape.kind, ErrorKind::InvalidArgument);
        assert!(shape.message.contains("hidden [1, 3]"));
        let missing = ModelError::io(
            "/nowhere/config.json",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(
            neuroshard_common::Error::from(missing).kind,
            ErrorKind::NotFound
        );
        let tensor = ModelError::MissingTensor {
            path: "ckpt".into(),
            name: "lm_head.weight".into(),
        };
        assert_eq!(
            neuroshard_common::Error::from(tensor).kind,
            ErrorKind::FailedPrecondition
        );
    }
}
