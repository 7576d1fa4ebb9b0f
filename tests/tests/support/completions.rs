//! Completions through the gateway's HTTP API as a client makes them (greedy, so a text can be
//! compared with an undisturbed run), and the parts of the status document that say which
//! nodes a request went through.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use neuroshard_local::{http_request, open_request};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A greedy completion request of `tokens` tokens.
fn body(prompt: &str, tokens: usize, stream: bool) -> String {
    json!({"model": "neurollm", "prompt": prompt, "max_tokens": tokens,
           "temperature": 0, "stream": stream})
    .to_string()
}

fn headers(auth: &str) -> [(&'static str, &str); 2] {
    [
        ("Content-Type", "application/json"),
        ("Authorization", auth),
    ]
}

/// The text of one whole (not streamed) greedy completion.
pub fn complete(port: u16, key: &str, prompt: &str, tokens: usize) -> String {
    let auth = format!("Bearer {key}");
    let r = http_request(
        port,
        "POST",
        "/v1/completions",
        &headers(&auth),
        &body(prompt, tokens, false),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let doc: Value = serde_json::from_str(&r.body).unwrap();
    doc["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Streams one greedy completion; sends its request id on `started` with the first event;
/// returns the text. An error event or a stream without `[DONE]` fails the test.
pub fn stream(
    port: u16,
    key: &str,
    prompt: &str,
    tokens: usize,
    started: mpsc::Sender<String>,
) -> String {
    let auth = format!("Bearer {key}");
    let socket = open_request(
        port,
        "POST",
        "/v1/completions",
        &headers(&auth),
        &body(prompt, tokens, true),
        TIMEOUT,
    )
    .unwrap();
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut text = String::new();
    let mut announced = false;
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no [DONE]: {text:?}"
        );
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return text;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("error").is_none(), "stream failed: {chunk}");
        if !announced {
            let _ = started.send(chunk["id"].as_str().unwrap().to_string());
            announced = true;
        }
        text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or_default());
    }
}

/// Streams every prompt at once, each on a thread of its own; returns the threads (each
/// ends with its text) and the request ids, once every stream has produced its first event.
pub fn start_streams(
    port: u16,
    key: &str,
    prompts: &[&str],
    tokens: usize,
) -> (Vec<std::thread::JoinHandle<String>>, Vec<String>) {
    let (started_tx, started_rx) = mpsc::channel();
    let streams: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let (prompt, key) = (prompt.to_string(), key.to_string());
            let started = started_tx.clone();
            std::thread::spawn(move || stream(port, &key, &prompt, tokens, started))
        })
        .collect();
    let ids = (0..prompts.len())
        .map(|_| started_rx.recv_timeout(TIMEOUT).unwrap())
        .collect();
    (streams, ids)
}

/// Node id → `[start, end)` of every live node holding layers, from the status document.
pub fn live_spans(doc: &Value) -> BTreeMap<String, (u64, u64)> {
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "live")
        .map(|n| {
            let span = (
                n["span"][0].as_u64().unwrap(),
                n["span"][1].as_u64().unwrap(),
            );
            (n["id"].as_str().unwrap().to_string(), span)
        })
        .filter(|(_, (start, end))| end > start)
        .collect()
}

/// Request `id` in the status document (active or recent).
pub fn request<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("request {id} not in the status"))
}

/// The node ids of a request's current route, first hop first.
pub fn route(request: &Value) -> Vec<String> {
    request["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}
