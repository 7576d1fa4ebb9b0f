//! Byte-level BPE tokenizer trained with the `tokenizers` crate and saved as `tokenizer.json`.
//! Byte-level means every string round-trips: unknown characters fall back to their bytes.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Result, TextError};

/// Separates documents and ends generations; always id 0 in tokenizers trained here.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// A byte-level BPE tokenizer with an end-of-text token.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    eos_id: u32,
}

fn tok_err(e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Trains a tokenizer with `vocab_size` entries (including the 256 byte symbols and the
    /// end-of-text token) on `texts`.
    pub fn train<I, S>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if vocab_size < 257 + 1 {
            return Err(TextError::Tokenizer(format!(
                "vocab_size {vocab_size} is too small: 256 byte symbols and {EOS_TOKEN} need 257"
            )));
        }
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .vocab_size(vocab_size)
                .min_frequency(2)
                .show_progress(false)
                .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build(),
        );
        let mut inner = Tokenizer::new(BPE::default());
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevel::default()));
        inner.train(&mut trainer, texts).map_err(tok_err)?;
        Self::from_tokenizer(inner)
    }

    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(inner)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self> {
        let eos_id = inner
            .token_to_id(EOS_TOKEN)
            .ok_or_else(|| TextError::Tokenizer(format!("tokenizer has no {EOS_TOKEN} token")))?;
        Ok(Self { inner, eos_id })
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tok_err)
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        neuroshard_common::fs::write_atomic(path, self.to_json()?.as_bytes()).map_err(|source| {
            TextError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// SHA-256 (hex) of the `tokenizer.json` text: what a dataset manifest pins.
    pub fn sha256(&self) -> Result<String> {
        Ok(hex::encode(Sha256::digest(self.to_json()?.as_bytes())))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// Incremental decoder for streaming: yields text only once the bytes of a character are
    /// complete, so a multi-byte character split over tokens is never printed half. Each step
    /// decodes a small window of recent ids, not the whole sequence.
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream {
            inner: self.inner.decode_stream(true),
        }
    }
}

type Decoding<'a> = tokenizers::tokenizer::DecodeStream<
    'a,
    tokenizers::models::ModelWrapper,
    tokenizers::normalizers::NormalizerWrapper,
    tokenizers::pre_tokenizers::PreTokenizerWrapper,
    tokenizers::processors::PostProcessorWrapper,
    tokenizers::decoders::DecoderWrapper,
>;

/// State of an incremental decode; see [`TextTokenizer::stream`].
pub struct TokenStream<'a> {
    inner: Decoding<'a>,
}

impl std::fmt::Debug for TokenStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream").finish_non_exhaustive()
    }
}

impl TokenStream<'_> {
    /// Adds a token and returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        Ok(self.inner.step(id).map_err(tok_err)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let line = "To be, or not to be, that is the question: whether 'tis nobler in the mind";
        (0..50).map(|i| format!("{line} {i} — ünïcödé")).collect()
    }

    #[test]
    fn trains_round_trips_and_reloads() {
        let tok = TextTokenizer::train(corpus().iter(), 400).unwrap();
        assert_eq!(tok.eos_id(), 0);
        assert!(tok.vocab_size() <= 400 && tok.vocab_size() > 257);
        let text = "whether 'tis nobler — ünïcödé 🙂";
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        // Merges learned: common words take fewer tokens than bytes.
        assert!(tok.encode("the question").unwrap().len() < "the question".len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = TextTokenizer::from_file(&path).unwrap();
        assert_eq!(back.encode(text).unwrap(), ids);
        assert_eq!(back.sha256().unwrap(), tok.sha256().unwrap());
    }

    #[test]
    fn stream_emits_whole_characters_only() {
        let tok = TextTokenizer::train(corpus().iter(), 300).unwrap();
        let text = "🙂 ünï to be";
        let mut stream = tok.stream();
        let mut out = String::new();
        for id in tok.encode(text).unwrap() {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        assert_eq!(out, text);
    }

    #[test]
    fn rejects_tiny_vocab_and_bad_files() {
        assert!(TextTokenizer::train(corpus().iter(), 100).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = TextTokenizer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
