//! One choice of a request, from sampled tokens to released text: each choice runs as its own
//! task that pulls its generator stream, decodes tokens incrementally, applies stop sequences,
//! and sends [`ChoiceEvent`]s tagged with its index to the response. When the response goes
//! away (client gone, error elsewhere) the task sees its channel close and drops the generator
//! stream, which cancels the generation.

use std::sync::Arc;

use neuroshard_common::Error;
use neuroshard_text::tokenizer::TextTokenizer;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::stop::StopMatcher;
use crate::api::wire::Finish;
use crate::generator::{FinishReason, Step, TokenStream};
use crate::http::error::ApiError;
use crate::http::telemetry::RequestClock;

/// What a choice reports, in order: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChoiceEvent {
    /// Newly released text (never empty), and the tokens the choice has generated in all
    /// once it is delivered (what a client that leaves after it is charged for).
    Text {
        text: String,
        tokens: u32,
    },
    Done {
        finish: Finish,
        /// Tokens generated, including those of a stop sequence that was cut.
        completion_tokens: u32,
    },
    Failed(ApiError),
}

/// An event and the index of the choice it belongs to.
pub type Tagged = (u32, ChoiceEvent);

/// How one choice turns tokens into text.
#[derive(Debug, Clone)]
pub struct ChoiceRules {
    pub index: u32,
    pub max_tokens: u32,
    pub stops: Vec<String>,
    pub trim_start: bool,
}

/// Starts a task for one choice; its events go to `tx`.
pub fn spawn_choice(
    tokenizer: Arc<TextTokenizer>,
    tokens: TokenStream,
    rules: ChoiceRules,
    clock: Arc<RequestClock>,
    tx: mpsc::Sender<Tagged>,
) {
    tokio::spawn(async move {
        let index = rules.index;
        let closed = tx.clone();
        // Stops as soon as the receiver is gone, even while the generator is silent.
        tokio::select! {
            biased;
            () = closed.closed() => {}
            () = decode_choice(&tokenizer, tokens, rules, &clock, |event| {
                let tx = tx.clone();
                async move { tx.send((index, event)).await.is_ok() }
            }) => {}
        }
    });
}

/// Drives one choice to its end, handing each event to `emit`; stops early when `emit` says
/// the receiver is gone. Dropping `tokens` on return cancels the generation.
async fn decode_choice<F, Fut>(
    tokenizer: &TextTokenizer,
    mut tokens: TokenStream,
    rules: ChoiceRules,
    clock: &RequestClock,
    emit: F,
) where
    F: Fn(ChoiceEvent) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut decoder = tokenizer.stream();
    let mut stops = StopMatcher::new(rules.stops);
    let mut trimming = rules.trim_start;
    let mut count: u32 = 0;
    let done = |finish, completion_tokens| ChoiceEvent::Done {
        finish,
        completion_tokens,
    };
    loop {
        let step = match tokens.next().await {
            Some(Ok(step)) => step,
            Some(Err(e)) => {
                emit(ChoiceEvent::Failed(e.into())).await;
                return;
            }
            None => {
                let e = Error::internal("the generator ended a stream without a finish reason");
                emit(ChoiceEvent::Failed(e.into())).await;
                return;
            }
        };
        match step {
            Step::Token(id) => {
                count += 1;
                clock.token();
                let mut piece = match decoder.push(id) {
                    Ok(piece) => piece,
                    Err(e) => {
                        let e = Error::internal(format!("decoding token {id}: {e}"));
                        emit(ChoiceEvent::Failed(e.into())).await;
                        return;
                    }
                };
                if trimming {
                    piece = piece.trim_start().to_owned();
                    trimming = piece.is_empty();
                }
                let released = stops.push(&piece);
                if !released.text.is_empty()
                    && !emit(ChoiceEvent::Text {
                        text: released.text,
                        tokens: count,
                    })
                    .await
                {
                    return;
                }
                if released.stopped {
                    emit(done(Finish::Stop, count)).await;
                    return;
                }
                // The generator should end here by itself; the gateway holds the line anyway.
                if count >= rules.max_tokens {
                    let tail = stops.finish();
                    if !tail.is_empty()
                        && !emit(ChoiceEvent::Text {
                            text: tail,
                            tokens: count,
                        })
                        .await
                    {
                        return;
                    }
                    emit(done(Finish::Length, count)).await;
                    return;
                }
            }
            Step::Finished(reason) => {
                let tail = stops.finish();
                if !tail.is_empty()
                    && !emit(ChoiceEvent::Text {
                        text: tail,
                        tokens: count,
                    })
                    .await
                {
                    return;
                }
                let finish = match reason {
                    FinishReason::EndOfSequence => Finish::Stop,
                    FinishReason::Length => Finish::Length,
                };
                emit(done(finish, count)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let text = "the quick brown fox jumps over the lazy dog. END of line.\n";
        TextTokenizer::train(std::iter::repeat_n(text, 20), 300).unwrap()
    }

    fn stream_of(steps: Vec<Result<Step, Error>>) -> TokenStream {
        Box::pin(tokio_stream::iter(steps))
    }

    fn tokens_of(tok: &TextTokenizer, text: &str) -> Vec<Result<Step, Error>> {
        tok.encode(text)
            .unwrap()
            .into_iter()
            .map(|id| Ok(Step::Token(id)))
            .collect()
    }

    async fn collect(
        tok: &TextTokenizer,
        steps: Vec<Result<Step, Error>>,
        stops: &[&str],
        max_tokens: u32,
        trim_start: bool,
    ) -> Vec<ChoiceEvent> {
        let events = std::sync::Mutex::new(Vec::new());
        let rules = ChoiceRules {
            index: 0,
            max_tokens,
            stops: stops.iter().map(|s| s.to_string()).collect(),
            trim_start,
        };
        let clock = RequestClock::start("test");
        decode_choice(tok, stream_of(steps), rules, &clock, |e| {
            events.lock().unwrap().push(e);
            async { true }
        })
        .await;
        events.into_inner().unwrap()
    }

    fn text_of(events: &[ChoiceEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ChoiceEvent::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn decodes_until_end_of_sequence() {
        let tok = tokenizer();
        let mut steps = tokens_of(&tok, "the lazy fox");
        let n = steps.len() as u32;
        steps.push(Ok(Step::Finished(FinishReason::EndOfSequence)));
        let events = collect(&tok, steps, &[], 100, false).await;
        assert_eq!(text_of(&events), "the lazy fox");
        assert_eq!(
            events.last(),
            Some(&ChoiceEvent::Done {
                finish: Finish::Stop,
                completion_tokens: n
            })
        );
    }

    #[tokio::test]
    async fn stop_sequence_cuts_and_counts_every_token() {
        let tok = tokenizer();
        let steps = tokens_of(&tok, "the quick END of line");
        let stop_at = tok.encode("the quick END").unwrap().len() as u32;
        let events = collect(&tok, steps, &["END"], 100, false).await;
        assert_eq!(text_of(&events), "the quick ");
        assert_eq!(
            events.last(),
            Some(&ChoiceEvent::Done {
                finish: Finish::Stop,
                completion_tokens: stop_at
            })
        );
    }

    #[tokio::test]
    async fn max_tokens_is_held_even_if_the_generator_runs_on() {
        let tok = tokenizer();
        let steps = tokens_of(&tok, "the quick brown fox jumps over");
        let events = collect(&tok, steps, &[], 3, false).await;
        let three = tok.encode("the quick brown fox jumps over").unwrap()[..3].to_vec();
        assert_eq!(text_of(&events), tok.decode(&three).unwrap());
        assert_eq!(
            events.last(),
            Some(&ChoiceEvent::Done {
                finish: Finish::Length,
                completion_tokens: 3
            })
        );
    }

    #[tokio::test]
    async fn errors_and_truncated_streams_fail_the_choice() {
        let tok = tokenizer();
        let mut steps = tokens_of(&tok, "the");
        steps.push(Err(Error::new(
            neuroshard_common::ErrorKind::Unavailable,
            "no route",
        )));
        let events = collect(&tok, steps, &[], 10, false).await;
        match events.last() {
            Some(ChoiceEvent::Failed(e)) => assert_eq!(e.status.as_u16(), 503),
            other => panic!("{other:?}"),
        }
        let events = collect(&tok, tokens_of(&tok, "the"), &[], 10, false).await;
        match events.last() {
            Some(ChoiceEvent::Failed(e)) => assert_eq!(e.status.as_u16(), 500),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn leading_whitespace_is_trimmed_when_asked() {
        let tok = tokenizer();
        let mut steps = tokens_of(&tok, "\n the dog");
        steps.push(Ok(Step::Finished(FinishReason::Length)));
        let events = collect(&tok, steps, &["\n\n"], 100, true).await;
        assert_eq!(text_of(&events), "the dog");
    }
}
