//! Request validation shared by both generation endpoints: the sampling knobs of a request
//! ([`Knobs`]) checked against the limits and the model's context into a [`Plan`].
//!
//! Defaults follow OpenAI: temperature 1, top_p 1, n 1, no stop sequences; `max_tokens`
//! defaults to 16 for completions and to the rest of the context (at most `limits.max_tokens`)
//! for chat. Without a seed a random one is drawn; choice `i` uses seed + i.

use neuroshard_text::sampling::SamplingParams;

use crate::api::wire::{StopParam, StreamOptions};
use crate::config::Limits;
use crate::generator::ModelCard;
use crate::http::error::ApiError;

/// The sampling-related fields of a request, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// The field errors about prompt length name: `prompt` or `messages`.
    pub prompt_param: &'static str,
    /// The field that gave the limit (`max_tokens` or `max_completion_tokens`) and its value.
    pub max_tokens: Option<(&'static str, i64)>,
    /// Used when `max_tokens` is absent; `None` means the rest of the context.
    pub default_max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub n: Option<i64>,
    pub stop: Option<StopParam>,
    /// A stop sequence the endpoint adds (the chat turn end); not counted against the limit.
    pub implicit_stop: Option<&'static str>,
    /// Drop whitespace before the first character of the output.
    pub trim_start: bool,
    pub seed: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

/// A validated request, ready to become one job per choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    /// The sampling of choice 0; choice `i` adds `i` to the seed.
    pub sampling: SamplingParams,
    pub n: u32,
    pub stops: Vec<String>,
    pub trim_start: bool,
    pub stream: bool,
    pub include_usage: bool,
}

impl Plan {
    /// The sampling of choice `index`.
    pub fn sampling_for(&self, index: u32) -> SamplingParams {
        SamplingParams {
            seed: self.sampling.seed.wrapping_add(u64::from(index)),
            ..self.sampling.clone()
        }
    }
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid_param(param, message)
}

impl Knobs {
    /// Checks every knob and the prompt's length; `prompt` is the tokenised prompt.
    pub fn plan(
        mut self,
        prompt: Vec<u32>,
        card: &ModelCard,
        limits: &Limits,
    ) -> Result<Plan, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(bad(
                "temperature",
                format!("'temperature' must lie in [0, 2], got {temperature}."),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad(
                "top_p",
                format!("'top_p' must lie in (0, 1], got {top_p}."),
            ));
        }
        let top_k = self.top_k.unwrap_or(0);
        let top_k = usize::try_from(top_k).map_err(|_| {
            bad(
                "top_k",
                format!("'top_k' must be 0 (all tokens) or more, got {top_k}."),
            )
        })?;
        let n = self.n.unwrap_or(1);
        if n < 1 || n > i64::from(limits.max_n) {
            return Err(bad(
                "n",
                format!("'n' must lie in [1, {}], got {n}.", limits.max_n),
            ));
        }
        let mut stops = self
            .stop
            .take()
            .map(StopParam::into_vec)
            .unwrap_or_default();
        if stops.len() > limits.max_stop_sequences {
            return Err(bad(
                "stop",
                format!(
                    "At most {} stop sequences are allowed, got {}.",
                    limits.max_stop_sequences,
                    stops.len()
                ),
            ));
        }
        if let Some(i) = stops.iter().position(String::is_empty) {
            return Err(bad(
                "stop",
                format!("Stop sequence {i} is empty; stop sequences need at least one character."),
            ));
        }
        stops.extend(self.implicit_stop.map(str::to_owned));
        let stream = self.stream.unwrap_or(false);
        let include_usage = match &self.stream_options {
            Some(_) if !stream => {
                return Err(bad(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true.".into(),
                ));
            }
            Some(options) => options.include_usage.unwrap_or(false),
            None => false,
        };

        let max_tokens = self.check_length(&prompt, card, limits)?;
        let seed = match self.seed {
            // Negative seeds are as good as any: their two's-complement bits are the seed.
            Some(seed) => seed as u64,
            None => rand::random(),
        };
        Ok(Plan {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                seed,
            },
            n: n as u32,
            stops,
            trim_start: self.trim_start,
            stream,
            include_usage,
        })
    }

    /// The prompt must leave room for at least one token; an explicit `max_tokens` must fit
    /// beside it. Returns the number of tokens to ask for.
    fn check_length(
        &self,
        prompt: &[u32],
        card: &ModelCard,
        limits: &Limits,
    ) -> Result<u32, ApiError> {
        let context = card.context_length;
        let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if prompt.is_empty() {
            return Err(bad(
                self.prompt_param,
                format!(
                    "The {} is empty; there is nothing to continue.",
                    self.prompt_param
                ),
            ));
        }
        if prompt_len >= context {
            return Err(ApiError::context_length_exceeded(
                self.prompt_param,
                format!(
                    "This model's maximum context length is {context} tokens, but the {} has {prompt_len} tokens, which leaves no room for the completion.",
                    self.prompt_param
                ),
            ));
        }
        let room = context - prompt_len;
        let Some((param, requested)) = self.max_tokens else {
            let default = self.default_max_tokens.unwrap_or(limits.max_tokens);
            return Ok(default.min(limits.max_tokens).min(room));
        };
        if requested < 1 {
            return Err(bad(
                param,
                format!("'{param}' must be at least 1, got {requested}."),
            ));
        }
        if requested > i64::from(limits.max_tokens) {
            return Err(bad(
                param,
                format!(
                    "'{param}' is too large: {requested}. This server generates at most {} tokens per choice.",
                    limits.max_tokens
                ),
            ));
        }
        let requested = requested as u32;
        if requested > room {
            return Err(ApiError::context_length_exceeded(
                param,
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt_len} in the {}, {requested} for the completion). Please reduce the {} or the completion length.",
                    u64::from(prompt_len) + u64::from(requested),
                    self.prompt_param,
                    self.prompt_param
                ),
            ));
        }
        Ok(requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        ModelCard {
            id: "m".into(),
            context_length: 32,
            vocab_size: 300,
            created: 1,
        }
    }

    fn knobs() -> Knobs {
        Knobs {
            prompt_param: "prompt",
            max_tokens: None,
            default_max_tokens: Some(16),
            temperature: None,
            top_p: None,
            top_k: None,
            n: None,
            stop: None,
            implicit_stop: None,
            trim_start: false,
            seed: Some(7),
            stream: None,
            stream_options: None,
        }
    }

    fn plan(k: Knobs, prompt_len: usize) -> Result<Plan, ApiError> {
        k.plan(vec![1; prompt_len], &card(), &Limits::default())
    }

    fn param_of(k: Knobs, prompt_len: usize) -> String {
        plan(k, prompt_len).unwrap_err().param.unwrap_or_default()
    }

    #[test]
    fn defaults_follow_openai() {
        let p = plan(knobs(), 4).unwrap();
        assert_eq!(p.max_tokens, 16);
        assert_eq!(p.sampling.temperature, 1.0);
        assert_eq!(p.sampling.top_p, 1.0);
        assert_eq!(p.sampling.top_k, 0);
        assert_eq!(p.sampling.seed, 7);
        assert_eq!(p.n, 1);
        assert!(!p.stream && !p.include_usage);
        // Chat: the rest of the context.
        let p = plan(
            Knobs {
                default_max_tokens: None,
                ..knobs()
            },
            4,
        )
        .unwrap();
        assert_eq!(p.max_tokens, 28);
        // Near the end of the context the default shrinks to what is left.
        assert_eq!(plan(knobs(), 30).unwrap().max_tokens, 2);
    }

    #[test]
    fn seeds_differ_per_choice_and_are_random_without_one() {
        let p = plan(knobs(), 1).unwrap();
        assert_eq!(p.sampling_for(2).seed, 9);
        let unseeded = || {
            plan(
                Knobs {
                    seed: None,
                    ..knobs()
                },
                1,
            )
            .unwrap()
            .sampling
            .seed
        };
        assert_ne!(unseeded(), unseeded());
        let negative = plan(
            Knobs {
                seed: Some(-1),
                ..knobs()
            },
            1,
        )
        .unwrap();
        assert_eq!(negative.sampling.seed, u64::MAX);
    }

    #[test]
    fn out_of_range_knobs_name_their_parameter() {
        let cases: Vec<(Knobs, &str)> = vec![
            (
                Knobs {
                    temperature: Some(2.5),
                    ..knobs()
                },
                "temperature",
            ),
            (
                Knobs {
                    temperature: Some(-0.1),
                    ..knobs()
                },
                "temperature",
            ),
            (
                Knobs {
                    top_p: Some(0.0),
                    ..knobs()
                },
                "top_p",
            ),
            (
                Knobs {
                    top_k: Some(-1),
                    ..knobs()
                },
                "top_k",
            ),
            (
                Knobs {
                    n: Some(0),
                    ..knobs()
                },
                "n",
            ),
            (
                Knobs {
                    n: Some(9),
                    ..knobs()
                },
                "n",
            ),
            (
                Knobs {
                    stop: Some(StopParam::Many(vec!["a".into(); 5])),
                    ..knobs()
                },
                "stop",
            ),
            (
                Knobs {
                    stop: Some(StopParam::One(String::new())),
                    ..knobs()
                },
                "stop",
            ),
            (
                Knobs {
                    stream_options: Some(StreamOptions::default()),
                    ..knobs()
                },
                "stream_options",
            ),
            (
                Knobs {
                    max_tokens: Some(("max_tokens", 0)),
                    ..knobs()
                },
                "max_tokens",
            ),
            (
                Knobs {
                    max_tokens: Some(("max_completion_tokens", 5000)),
                    ..knobs()
                },
                "max_completion_tokens",
            ),
        ];
        for (k, param) in cases {
            assert_eq!(param_of(k, 4), param);
        }
    }

    #[test]
    fn context_length_is_enforced() {
        let e = plan(knobs(), 32).unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = plan(
            Knobs {
                max_tokens: Some(("max_tokens", 10)),
                ..knobs()
            },
            23,
        )
        .unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(
            e.message.contains("33 tokens (23 in the prompt, 10"),
            "{}",
            e.message
        );
        let fits = plan(
            Knobs {
                max_tokens: Some(("max_tokens", 10)),
                ..knobs()
            },
            22,
        )
        .unwrap();
        assert_eq!(fits.max_tokens, 10);
        let e = plan(knobs(), 0).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn implicit_stop_joins_after_the_limit_check() {
        let p = plan(
            Knobs {
                stop: Some(StopParam::Many(vec!["a".into(); 4])),
                implicit_stop: Some("\n\n"),
                ..knobs()
            },
            1,
        )
        .unwrap();
        assert_eq!(p.stops.len(), 5);
        assert_eq!(p.stops[4], "\n\n");
    }
}
