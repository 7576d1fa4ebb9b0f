//! The HTTP API end to end through the router (no sockets): documents, streaming, usage,
//! choices, stop sequences, every error case, auth, and the operational routes, against a
//! deterministic test generator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use neuroshard_common::ErrorKind;
use serde_json::{Value, json};
use support::{CONTEXT, KEY, MODEL, Mode, fixture, fixture_with, pieces};
use tokio_stream::StreamExt;
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    /// The `data:` payloads of an event stream, in order.
    fn events(&self) -> Vec<String> {
        assert!(
            self.content_type.starts_with("text/event-stream"),
            "{}",
            self.content_type
        );
        self.text()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
            .collect()
    }

    /// The JSON chunks of an event stream, checking it ends with `[DONE]`.
    fn chunks(&self) -> Vec<Value> {
        let events = self.events();
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }

    /// The error document: status, type, param, code.
    fn error(&self) -> (u16, String, Value, Value) {
        let e = self.json();
        let error = &e["error"];
        assert!(error["message"].is_string(), "{e}");
        (
            self.status.as_u16(),
            error["type"].as_str().unwrap().to_owned(),
            error["param"].clone(),
            error["code"].clone(),
        )
    }
}

async fn send(app: &axum::Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        content_type,
        body,
    }
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap()
}

/// The concatenated text of each choice in streamed chunks, and their finish reasons.
fn streamed_choices(chunks: &[Value], chat: bool) -> (Vec<String>, Vec<Value>) {
    let mut texts: Vec<String> = Vec::new();
    let mut finishes: Vec<Value> = Vec::new();
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finishes.resize(i + 1, Value::Null);
            }
            let piece = if chat {
                choice["delta"]["content"].as_str().unwrap_or("")
            } else {
                choice["text"].as_str().unwrap()
            };
            texts[i].push_str(piece);
            if !choice["finish_reason"].is_null() {
                assert!(finishes[i].is_null(), "two finish reasons: {chunks:?}");
                finishes[i] = choice["finish_reason"].clone();
            }
        }
    }
    (texts, finishes)
}

#[tokio::test]
async fn models_are_listed_and_found() {
    let (app, _, _) = fixture();
    let list = send(&app, get("/v1/models")).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(
        list.json(),
        json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "neuroshard"}]})
    );
    let one = send(&app, get(&format!("/v1/models/{MODEL}"))).await;
    assert_eq!(one.json()["id"], MODEL);
    let missing = send(&app, get("/v1/models/gpt-4")).await;
    assert_eq!(
        missing.error(),
        (
            404,
            "invalid_request_error".into(),
            json!("model"),
            json!("model_not_found")
        )
    );
}

#[tokio::test]
async fn completion_text_usage_and_job() {
    let (app, generator, tok) = fixture();
    let body = json!({"model": MODEL, "prompt": "the lazy dog", "max_tokens": 7, "seed": 11,
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "user": "someone"});
    let reply = send(&app, post("/v1/completions", &body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let r = reply.json();
    let prompt = tok.encode("the lazy dog").unwrap();
    let expected = tok.decode(&generator.sequence(11, &prompt, 7)).unwrap();
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["model"], MODEL);
    assert!(r["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(r["choices"][0]["text"], expected);
    assert_eq!(r["choices"][0]["index"], 0);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": prompt.len(), "completion_tokens": 7, "total_tokens": prompt.len() + 7})
    );
    let jobs = generator.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].request_id, r["id"].as_str().unwrap());
    assert_eq!(jobs[0].prompt, prompt);
    assert_eq!(jobs[0].max_tokens, 7);
    assert_eq!(jobs[0].sampling.seed, 11);
    assert_eq!(jobs[0].sampling.temperature, 0.5);
    assert_eq!(jobs[0].sampling.top_p, 0.9);
    assert_eq!(jobs[0].sampling.top_k, 40);
}

#[tokio::test]
async fn end_of_sequence_finishes_with_stop_and_defaults_apply() {
    let (app, generator, _) = fixture();
    generator.set_mode(Mode::Normal { eos_after: Some(3) });
    let r = send(
        &app,
        post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": ["the fox"]}),
        ),
    )
    .await
    .json();
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(r["usage"]["completion_tokens"], 3);
    let job = &generator.jobs()[0];
    assert_eq!(job.max_tokens, 16, "OpenAI's completion default");
    assert_eq!(job.sampling.temperature, 1.0);
    // Without a seed each request draws its own.
    send(
        &app,
        post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "the fox"}),
        ),
    )
    .await;
    let jobs = generator.jobs();
    assert_ne!(jobs[0].sampling.seed, jobs[1].sampling.seed);
}

#[tokio::test]
async fn streamed_and_whole_completions_give_the_same_text() {
    let (app, _, _) = fixture();
    let body = json!({"model": MODEL, "prompt": "a merry band", "max_tokens": 12, "seed": 5});
    let whole = send(&app, post("/v1/completions", &body)).await.json();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let reply = send(&app, post("/v1/completions", &streamed)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let chunks = reply.chunks();
    // One event per token: nothing is batched when there are no stop sequences.
    assert_eq!(chunks.len(), 12 + 1, "{chunks:?}");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "text_completion");
        assert!(chunk["id"].as_str().unwrap().starts_with("cmpl-"));
        assert!(chunk.get("usage").is_none());
    }
    let (texts, finishes) = streamed_choices(&chunks, false);
    assert_eq!(texts, [whole["choices"][0]["text"].as_str().unwrap()]);
    assert_eq!(finishes, [json!("length")]);
}

#[tokio::test]
async fn chat_streamed_with_usage_matches_the_whole_answer() {
    let (app, generator, tok) = fixture();
    let body = json!({"model": MODEL, "seed": 3, "max_completion_tokens": 9, "messages": [
        {"role": "system", "content": "Speak in verse."},
        {"role": "user", "content": [{"type": "text", "text": "Sing of kings."}]},
    ]});
    let reply = send(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let whole = reply.json();
    let prompt = tok
        .encode("System:\nSpeak in verse.\n\nUser:\nSing of kings.\n\nAssistant:\n")
        .unwrap();
    assert_eq!(generator.jobs()[0].prompt, prompt);
    let expected = tok
        .decode(&generator.sequence(3, &prompt, 9))
        .unwrap()
        .trim_start()
        .to_owned();
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["choices"][0]["message"]["content"], expected);
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(
        whole["usage"],
        json!({"prompt_tokens": prompt.len(), "completion_tokens": 9, "total_tokens": prompt.len() + 9})
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = send(&app, post("/v1/chat/completions", &streamed))
        .await
        .chunks();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    let (texts, finishes) = streamed_choices(&chunks, true);
    assert_eq!(texts, [expected]);
    assert_eq!(finishes, [json!("length")]);
}

#[tokio::test]
async fn several_choices_run_as_separate_seeded_jobs() {
    let (app, generator, tok) = fixture();
    let body = json!({"model": MODEL, "prompt": "kings", "max_tokens": 6, "seed": 100, "n": 3});
    let whole = send(&app, post("/v1/completions", &body)).await.json();
    let prompt = tok.encode("kings").unwrap();
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut seeds: Vec<u64> = generator.jobs().iter().map(|j| j.sampling.seed).collect();
    seeds.sort_unstable();
    assert_eq!(seeds, [100, 101, 102]);
    let id = whole["id"].as_str().unwrap();
    let mut ids: Vec<String> = generator
        .jobs()
        .iter()
        .map(|j| j.request_id.clone())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [format!("{id}-0"), format!("{id}-1"), format!("{id}-2")]
    );
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let expected = tok
            .decode(&generator.sequence(100 + i as u64, &prompt, 6))
            .unwrap();
        assert_eq!(choice["text"], expected);
    }
    assert_ne!(choices[0]["text"], choices[1]["text"]);
    assert_eq!(whole["usage"]["completion_tokens"], 18);
    assert_eq!(whole["usage"]["prompt_tokens"], prompt.len());

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = send(&app, post("/v1/completions", &streamed))
        .await
        .chunks();
    let (texts, finishes) = streamed_choices(&chunks, false);
    let whole_texts: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, whole_texts);
    assert_eq!(finishes, vec![json!("length"); 3]);
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
}

#[tokio::test]
async fn a_stop_sequence_across_tokens_cuts_the_text_and_cancels_generation() {
    let (app, generator, tok) = fixture();
    let prompt = tok.encode("the river").unwrap();
    let tokens = generator.sequence(9, &prompt, 40);
    let parts = pieces(&tok, &tokens);
    // The last character of token 5's text and the first of token 6's: split across tokens.
    let stop: String = format!(
        "{}{}",
        parts[5].chars().last().unwrap(),
        parts[6].chars().next().unwrap()
    );
    let all = parts.concat();
    let at = all.find(&stop).unwrap();
    let mut covered = 0;
    let used = parts
        .iter()
        .position(|p| {
            covered += p.len();
            covered >= at + stop.len()
        })
        .unwrap()
        + 1;
    let body = json!({"model": MODEL, "prompt": "the river", "max_tokens": 40, "seed": 9,
        "stop": [stop.clone(), "zzzz"]});
    let r = send(&app, post("/v1/completions", &body)).await.json();
    assert_eq!(r["choices"][0]["text"], &all[..at], "stop {stop:?}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(r["usage"]["completion_tokens"], used);
    // The generation was cancelled right there, not run to max_tokens.
    assert_eq!(generator.pulled.load(Ordering::SeqCst), used);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = send(&app, post("/v1/completions", &streamed))
        .await
        .chunks();
    let (texts, finishes) = streamed_choices(&chunks, false);
    assert_eq!(texts, [&all[..at]]);
    assert_eq!(finishes, [json!("stop")]);
    for chunk in &chunks {
        assert!(
            !chunk["choices"][0]["text"]
                .as_str()
                .unwrap()
                .contains(&stop)
        );
    }
}

#[tokio::test]
async fn tokens_are_streamed_as_they_are_generated() {
    let (app, generator, _) = fixture();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    generator.set_mode(Mode::Gated(permits.clone()));
    let body =
        json!({"model": MODEL, "prompt": "the fox", "max_tokens": 3, "seed": 1, "stream": true});
    let response = app
        .clone()
        .oneshot(post("/v1/completions", &body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut frames = response.into_body().into_data_stream();
    // The first token's event arrives while the generator still waits for the second.
    let first = tokio::time::timeout(Duration::from_secs(5), frames.next())
        .await
        .expect("the first token was held back")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: {"));
    assert_eq!(generator.pulled.load(Ordering::SeqCst), 1);
    permits.add_permits(2);
    let mut rest = String::new();
    while let Some(frame) = frames.next().await {
        rest.push_str(&String::from_utf8_lossy(&frame.unwrap()));
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    assert_eq!(generator.pulled.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_dropped_stream_cancels_the_generation() {
    let (app, generator, _) = fixture();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    generator.set_mode(Mode::Gated(permits));
    let body = json!({"model": MODEL, "prompt": "the fox", "max_tokens": 30, "stream": true});
    let response = app
        .clone()
        .oneshot(post("/v1/completions", &body))
        .await
        .unwrap();
    let mut frames = response.into_body().into_data_stream();
    frames.next().await.unwrap().unwrap();
    assert_eq!(generator.dropped.load(Ordering::SeqCst), 0);
    drop(frames);
    // The client is gone: the choice's task sees its channel close and drops the stream.
    for _ in 0..100 {
        if generator.dropped.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the generator stream was not dropped");
}

#[tokio::test]
async fn one_request_over_the_running_limit_gets_429_with_retry_after() {
    const LIMIT: usize = 3;
    let mut config = support::config();
    config.admission.max_running_requests = LIMIT as u32;
    config.admission.max_waiting_requests = 0;
    config.admission.retry_after_s = 2;
    let (app, generator, _) = fixture_with(config);
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    generator.set_mode(Mode::Gated(permits.clone()));
    let body = json!({"model": MODEL, "prompt": "the fox", "max_tokens": 5, "stream": true});
    // LIMIT + 1 streams at once; each running one stops after its first token.
    let replies = futures_util::future::join_all(
        (0..=LIMIT).map(|_| app.clone().oneshot(post("/v1/completions", &body))),
    )
    .await;
    let (refused, mut running): (Vec<_>, Vec<_>) = replies
        .into_iter()
        .map(Result::unwrap)
        .partition(|r| r.status() == StatusCode::TOO_MANY_REQUESTS);
    assert_eq!((refused.len(), running.len()), (1, LIMIT));
    assert!(running.iter().all(|r| r.status() == StatusCode::OK));
    let refused = refused.into_iter().next().unwrap();
    assert_eq!(refused.headers()[header::RETRY_AFTER], "2");
    let body_bytes = axum::body::to_bytes(refused.into_body(), usize::MAX)
        .await
        .unwrap();
    let error: Value = serde_json::from_slice(&body_bytes).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_exceeded");
    assert_eq!(error["error"]["code"], "server_busy");
    assert_eq!(
        generator.jobs().len(),
        LIMIT,
        "the refused request never started"
    );

    // A client that goes away gives its turn back.
    drop(running.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = app
            .clone()
            .oneshot(post("/v1/completions", &body))
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::time::Instant::now() < deadline,
            "the turn was never given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    permits.add_permits(100);
}

#[tokio::test]
async fn generator_failures_map_to_statuses_before_and_during_streams() {
    let (app, generator, _) = fixture();
    generator.set_mode(Mode::FailFirst(ErrorKind::Unavailable));
    let body = json!({"model": MODEL, "prompt": "the fox", "max_tokens": 5});
    let r = send(&app, post("/v1/completions", &body)).await;
    assert_eq!(
        r.error(),
        (503, "server_error".into(), Value::Null, json!("no_route"))
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no route")
    );
    // Streamed, a failure before the first token is still an HTTP error.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = send(&app, post("/v1/completions", &streamed)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // After streaming started, the error is an event and the stream ends without [DONE].
    generator.set_mode(Mode::FailAfter(2, ErrorKind::Unavailable));
    let r = send(&app, post("/v1/completions", &streamed)).await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.events();
    assert_eq!(events.len(), 3, "{events:?}");
    let error: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(error["error"]["code"], "no_route");
    assert_eq!(error["error"]["type"], "server_error");
    let r = send(&app, post("/v1/completions", &body)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn keys_are_required_on_v1_only() {
    let (app, _, _) = fixture();
    let body = json!({"model": MODEL, "prompt": "x"});
    let no_key = Request::post("/v1/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let r = send(&app, no_key).await;
    assert_eq!(
        r.error(),
        (
            401,
            "invalid_request_error".into(),
            Value::Null,
            json!("invalid_api_key")
        )
    );
    let wrong = Request::get("/v1/models")
        .header(header::AUTHORIZATION, "Bearer sk-wrong-key-but-long-enough")
        .body(Body::empty())
        .unwrap();
    let r = send(&app, wrong).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!r.text().contains("sk-wrong"), "{}", r.text());
    for open in ["/healthz", "/readyz", "/metrics", "/api/v1/status"] {
        let r = send(&app, Request::get(open).body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn bad_requests_name_the_problem() {
    let (app, _, _) = fixture();
    let base = json!({"model": MODEL, "prompt": "the fox"});
    let with = |field: &str, value: Value| {
        let mut b = base.clone();
        b[field] = value;
        b
    };
    let chat = |extra: Value| {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (cmpl, chat_path) = ("/v1/completions", "/v1/chat/completions");
    let (bad, unknown, unsupported, ctx) = (
        "invalid_value",
        "unknown_parameter",
        "unsupported_parameter",
        "context_length_exceeded",
    );
    // (path, body, status, param, code); the type is always invalid_request_error.
    let long_prompt = "the ".repeat(CONTEXT as usize);
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            cmpl,
            with("model", json!("gpt-4")),
            404,
            "model",
            "model_not_found",
        ),
        (
            cmpl,
            with("temprature", json!(1)),
            400,
            "temprature",
            unknown,
        ),
        (cmpl, with("echo", json!(true)), 400, "echo", unsupported),
        (
            cmpl,
            with("logprobs", json!(2)),
            400,
            "logprobs",
            unsupported,
        ),
        (
            cmpl,
            with("temperature", json!(2.5)),
            400,
            "temperature",
            bad,
        ),
        (cmpl, with("top_p", json!(0)), 400, "top_p", bad),
        (cmpl, with("n", json!(9)), 400, "n", bad),
        (
            cmpl,
            with("stop", json!(["a", "b", "c", "d", "e"])),
            400,
            "stop",
            bad,
        ),
        (
            cmpl,
            with("stream_options", json!({})),
            400,
            "stream_options",
            bad,
        ),
        (cmpl, with("prompt", json!(["a", "b"])), 400, "prompt", bad),
        (
            cmpl,
            with("temperature", json!("hot")),
            400,
            "temperature",
            "invalid_json",
        ),
        (cmpl, json!({"prompt": "x"}), 400, "model", bad),
        (
            cmpl,
            with("max_tokens", json!(CONTEXT)),
            400,
            "max_tokens",
            ctx,
        ),
        (
            cmpl,
            with("max_tokens", json!(100_000)),
            400,
            "max_tokens",
            bad,
        ),
        (cmpl, with("prompt", json!(long_prompt)), 400, "prompt", ctx),
        (cmpl, with("prompt", json!("")), 400, "prompt", bad),
        (
            chat_path,
            chat(json!({"tools": [{"type": "function"}]})),
            400,
            "tools",
            unsupported,
        ),
        (
            chat_path,
            chat(json!({"response_format": {"type": "json_object"}})),
            400,
            "response_format",
            unsupported,
        ),
        (
            chat_path,
            chat(json!({"frequency_penalty": 0.5})),
            400,
            "frequency_penalty",
            unsupported,
        ),
        (
            chat_path,
            chat(json!({"messages": [{"role": "robot", "content": "x"}]})),
            400,
            "messages[0].role",
            bad,
        ),
        (
            chat_path,
            chat(json!({"messages": [{"role": "user", "content": "x", "mood": "sad"}]})),
            400,
            "messages[0].mood",
            unknown,
        ),
        (
            chat_path,
            chat(json!({"max_completion_tokens": 200})),
            400,
            "max_completion_tokens",
            ctx,
        ),
    ];
    for (path, body, status, param, code) in cases {
        let r = send(&app, post(path, &body)).await;
        assert_eq!(
            r.error(),
            (
                status,
                "invalid_request_error".to_owned(),
                json!(param),
                json!(code)
            ),
            "{body}: {}",
            r.text()
        );
    }
    // Accepted at their defaults.
    let ok = json!({"model": MODEL, "prompt": "x", "echo": false, "logprobs": null, "best_of": 1,
        "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "suffix": null,
        "max_tokens": 2, "user": "u"});
    assert_eq!(send(&app, post(cmpl, &ok)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_that_are_not_json_or_too_large() {
    let (app, _, _) = fixture();
    let form = Request::post("/v1/completions")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("model=x"))
        .unwrap();
    let r = send(&app, form).await;
    assert_eq!(
        r.error(),
        (
            415,
            "invalid_request_error".into(),
            Value::Null,
            json!("unsupported_media_type")
        )
    );
    let broken = Request::post("/v1/chat/completions")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"model\": "))
        .unwrap();
    let r = send(&app, broken).await;
    assert_eq!(r.error().0, 400);
    assert_eq!(r.error().3, json!("invalid_json"));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    let huge = json!({"model": MODEL, "prompt": "a".repeat(2 << 20)});
    let r = send(&app, post("/v1/completions", &huge)).await;
    assert_eq!(
        r.error(),
        (
            413,
            "invalid_request_error".into(),
            Value::Null,
            json!("request_too_large")
        )
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048576")
    );
    // Unknown routes and methods answer in the same format.
    let r = send(&app, get("/v1/embeddings")).await;
    assert_eq!(r.error().0, 404);
    let r = send(&app, get("/v1/completions")).await;
    assert_eq!(r.error().0, 405);
}

#[tokio::test]
async fn health_readiness_status_and_metrics() {
    let (app, generator, _) = fixture();
    let r = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    let r = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    generator.ready.store(false, Ordering::SeqCst);
    let r = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["reason"].as_str().unwrap().contains("route"));

    let status = send(
        &app,
        Request::get("/api/v1/status").body(Body::empty()).unwrap(),
    )
    .await
    .json();
    for field in [
        "now_ms",
        "architecture",
        "nodes",
        "layers",
        "replicas",
        "requests",
        "throughput",
        "training",
    ] {
        assert!(status.get(field).is_some(), "{field}: {status}");
    }
    assert_eq!(status["nodes"][0]["id"], "node-a");
    assert_eq!(status["nodes"][0]["span"], json!([0, 4]));
    // Without a key, the public summary: the shape without endpoints or process ids.
    assert_eq!(status["view"], "summary");
    assert!(status["nodes"][0]["endpoint"].is_null(), "{status}");
    assert!(status["nodes"][0]["pid"].is_null(), "{status}");
    // With a key, the detail view.
    let detail = send(&app, get("/api/v1/status")).await.json();
    assert_eq!(detail["view"], "detail");
    assert_eq!(detail["nodes"][0]["endpoint"], "http://127.0.0.1:7500");
    assert_eq!(detail["nodes"][0]["pid"], 4242);
    // A wrong key is refused, not downgraded to the summary.
    let wrong = Request::get("/api/v1/status")
        .header(header::AUTHORIZATION, "Bearer sk-wrong-key-but-long-enough")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, wrong).await.status, StatusCode::UNAUTHORIZED);

    let body = json!({"model": MODEL, "prompt": "the fox", "max_tokens": 4, "stream": true});
    send(&app, post("/v1/completions", &body)).await;
    // The duration is recorded when the request's last task lets go; give it a moment.
    let mut text = String::new();
    for _ in 0..50 {
        let r = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert!(r.content_type.starts_with("text/plain"));
        text = r.text();
        if text.contains("gateway_request_duration_seconds_count") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for needle in [
        "gateway_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
        "gateway_http_requests_total{endpoint=\"/readyz\",status=\"503\"}",
        "gateway_tokens_generated_total",
        "gateway_prompt_tokens_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_request_duration_seconds_count{endpoint=\"/v1/completions\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[tokio::test]
async fn the_generator_must_serve_the_configured_model() {
    let tok = support::tokenizer();
    let generator = support::FakeGenerator::new(&tok);
    let config = neuroshard_swarm_gateway::GatewayConfig {
        model: "other".into(),
        ..support::config()
    };
    let err = neuroshard_swarm_gateway::AppState::new(config, tok, generator).unwrap_err();
    assert!(err.to_string().contains("other"), "{err}");
}

#[tokio::test]
async fn the_key_middleware_attaches_the_account() {
    use axum::Extension;
    use neuroshard_swarm_gateway::http::api_keys::Account;
    use neuroshard_swarm_gateway::http::auth::require_key;
    let tok = support::tokenizer();
    let generator = support::FakeGenerator::new(&tok);
    let state = neuroshard_swarm_gateway::AppState::new(support::config(), tok, generator).unwrap();
    let whoami = axum::Router::new()
        .route(
            "/v1/whoami",
            axum::routing::get(|Extension(account): Extension<Account>| async move { account.0 }),
        )
        .route_layer(axum::middleware::from_fn_with_state(state, require_key));
    let r = send(&whoami, get("/v1/whoami")).await;
    assert_eq!(
        (r.status, r.text()),
        (StatusCode::OK, support::ACCOUNT.to_owned())
    );
    let r = send(
        &whoami,
        Request::get("/v1/whoami").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
