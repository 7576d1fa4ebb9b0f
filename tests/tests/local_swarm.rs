//! The local swarm end to end, as `neuroshard up` runs it: PostgreSQL, the registry, four
//! shard workers (two pipelines of two stages) and the gateway as separate processes. Through
//! the OpenAI-compatible HTTP API: a streamed completion equals the non-streamed one and the
//! in-process model's output; bad requests get OpenAI errors with the right statuses; kill -9
//! of the worker serving a hop during a streamed greedy generation leaves the text unchanged;
//! the dashboard renders the live swarm in headless Chromium; stopping leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use neuroshard_local::{HttpResponse, http_get, http_request, open_request};
use neuroshard_local::{LocalSwarm, SwarmOptions};
use neuroshard_model::Shard;
use neuroshard_tests::browser::{Chromium, attribute, element_text, start_tags};
use neuroshard_text::tokenizer::TextTokenizer;

const KEY: &str = "sk-test-0123456789abcdef";
const TIMEOUT: Duration = Duration::from_secs(30);

struct Fixture {
    swarm: LocalSwarm,
    model: Shard,
    tokenizer: TextTokenizer,
    _dir: tempfile::TempDir,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, model, tokenizer) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 21);
    // A training report beside the weights, as `neuroshard train` leaves one: the dashboard
    // draws its curves as the run that produced the served model.
    std::fs::write(
        ckpt.join("training.json"),
        r#"{"steps": 30, "train_history": [[10, 5.9], [20, 5.1], [30, 4.8]],
            "validation_history": [[30, 5.0]]}"#,
    )
    .unwrap();
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.http_port = 0;
    options.api_key = KEY.into();
    // The worker killed below stays down: the failover and the dashboard are checked against
    // a swarm with a node gone (restarts are tested in up_command.rs).
    options.restart = None;
    let swarm = LocalSwarm::start(&options, Duration::from_secs(120), |s| println!("{s}")).unwrap();
    Fixture {
        swarm,
        model,
        tokenizer,
        _dir: dir,
    }
}

fn post(port: u16, path: &str, key: Option<&str>, body: &str) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    http_request(port, "POST", path, &headers, body, TIMEOUT).unwrap()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Text of a completion's server-sent events (and whether `[DONE]` ended them).
fn sse_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for event in body.split("\n\n") {
        let Some(data) = event.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v = json(data);
        if let Some(t) = v["choices"][0]["text"].as_str() {
            text.push_str(t);
        }
    }
    (text, done)
}

#[test]
fn local_swarm_serves_streams_fails_over_and_shows_the_dashboard() {
    let mut f = start();
    let port = f.swarm.gateway_port;
    let prompt = "the king hath";

    // Streamed and non-streamed completions: same text, equal to the in-process model.
    let body = format!(
        r#"{{"model":"neurollm","prompt":"{prompt}","max_tokens":40,"temperature":0,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    let streamed = post(port, "/v1/completions", Some(KEY), &body);
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    let (streamed_text, done) = sse_text(&streamed.body);
    assert!(done, "stream did not end with [DONE]: {}", streamed.body);
    assert!(streamed.body.contains(r#""usage""#), "{}", streamed.body);
    let whole = post(
        port,
        "/v1/completions",
        Some(KEY),
        &format!(r#"{{"model":"neurollm","prompt":"{prompt}","max_tokens":40,"temperature":0}}"#),
    );
    assert_eq!(whole.status, 200, "{}", whole.body);
    let whole = json(&whole.body);
    let whole_text = whole["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(streamed_text, whole_text);
    assert_eq!(
        whole_text,
        support::checkpoints::greedy_text(&f.model, &f.tokenizer, prompt, 40)
    );
    assert_eq!(
        whole["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        f.tokenizer.encode(prompt).unwrap().len()
    );
    assert_eq!(whole["usage"]["completion_tokens"], 40);

    // Bad requests: OpenAI error documents with the right statuses.
    let ok_body = r#"{"model":"neurollm","prompt":"x","max_tokens":2}"#;
    let cases = [
        (None, ok_body.to_string(), 401),
        (Some("sk-wrong-key-000000000"), ok_body.to_string(), 401),
        (
            Some(KEY),
            r#"{"model":"gpt-9","prompt":"x"}"#.to_string(),
            404,
        ),
        (
            Some(KEY),
            r#"{"model":"neurollm","prompt":"x","temperature":7}"#.to_string(),
            400,
        ),
        (
            Some(KEY),
            r#"{"model":"neurollm","prompt":"x","bogus_field":1}"#.to_string(),
            400,
        ),
        (Some(KEY), "{not json".to_string(), 400),
        (
            Some(KEY),
            format!(
                r#"{{"model":"neurollm","prompt":"{}"}}"#,
                "a".repeat(2 << 20)
            ),
            413,
        ),
        (
            Some(KEY),
            format!(
                r#"{{"model":"neurollm","prompt":"{}","max_tokens":10}}"#,
                "king ".repeat(400)
            ),
            400,
        ),
    ];
    for (key, body, status) in cases {
        let r = post(port, "/v1/completions", key, &body);
        assert_eq!(r.status, status, "{}", r.body);
        let err = json(&r.body);
        assert!(err["error"]["message"].as_str().is_some(), "{}", r.body);
        assert!(!r.body.contains("sk-wrong-key"), "an error echoed the key");
    }

    // Failover through the gateway: kill -9 the worker on the last hop mid-stream.
    let expected = support::checkpoints::greedy_text(&f.model, &f.tokenizer, prompt, 64);
    let body = format!(
        r#"{{"model":"neurollm","prompt":"{prompt}","max_tokens":64,"temperature":0,"stream":true}}"#
    );
    let stream = open_request(
        port,
        "POST",
        "/v1/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {KEY}")),
        ],
        &body,
        TIMEOUT,
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut text = String::new();
    let mut events = 0;
    let mut victim = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v = json(data);
        assert!(v.get("error").is_none(), "stream failed: {data}");
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        events += 1;
        // An untrained model's tokens are often partial UTF-8 that produce no text, so events
        // are sparse: kill at the first one, early in the 64 tokens.
        if events == 1 {
            let status = json(&http_get(port, "/api/v1/status", TIMEOUT).unwrap().body);
            let request = status["requests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["state"] == "streaming")
                .expect("the streaming request is in the status")
                .clone();
            let node = request["route"].as_array().unwrap().last().unwrap();
            let node = node.as_str().unwrap().to_string();
            f.swarm.worker_mut(&node).unwrap().process.kill();
            victim = Some(node);
        }
    }
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let victim = victim.expect("a worker was killed mid-stream");
    assert_eq!(text, expected, "the failover changed the output");
    let status = json(&http_get(port, "/api/v1/status", TIMEOUT).unwrap().body);
    let request = status["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["failovers"].as_u64().unwrap_or(0) > 0)
        .expect("a request with a failover");
    assert!(
        !request["route"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == &victim)
    );
    assert_eq!(request["completion_tokens"], 64, "{request}");

    // The dashboard, in headless Chromium against the live gateway, once the registry has
    // declared the killed worker dead (so the live count holds still while the page loads).
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        let status = json(&http_get(port, "/api/v1/status", TIMEOUT).unwrap().body);
        let victim_live = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == victim.as_str() && n["state"] == "live");
        if !victim_live {
            break status;
        }
        assert!(Instant::now() < deadline, "the killed worker stays live");
        std::thread::sleep(Duration::from_millis(200));
    };
    let shot: PathBuf = std::env::temp_dir().join("neuroshard-dashboard-local-swarm.png");
    let dom = Chromium::locate()
        .unwrap()
        .window_size(1440, 1400)
        .render(&format!("http://127.0.0.1:{port}/"), &shot)
        .unwrap();
    let live = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "live")
        .count();
    assert_eq!(
        element_text(&dom, "node-count").as_deref(),
        Some(live.to_string().as_str())
    );
    let plotted = start_tags(&dom, "path").into_iter().any(|t| {
        attribute(t, "class").as_deref() == Some("series")
            && attribute(t, "d").is_some_and(|d| d.len() > 10)
    });
    assert!(plotted, "no plotted series in the dashboard");
    let loss_curve = start_tags(&dom, "path")
        .into_iter()
        .any(|t| attribute(t, "data-series").as_deref() == Some("loss"));
    assert!(
        loss_curve,
        "the served checkpoint's loss curve is not drawn"
    );
    assert_eq!(status["training"]["state"], "finished");
    assert_eq!(status["training"]["losses"][2][1], 4.8);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    println!("dashboard screenshot: {}", shot.display());

    // Stopping leaves no process behind.
    let pids: Vec<u32> = f.swarm.workers.iter().map(|w| w.process.pid()).collect();
    f.swarm.stop();
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "worker {pid} still running"
        );
    }
}
