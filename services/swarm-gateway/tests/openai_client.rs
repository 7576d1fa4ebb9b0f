//! The official OpenAI Python client, unchanged, against the gateway on a real loopback socket
//! (`scripts/openai_client_check.py` through `$NEUROSHARD_PYTHON`, which `scripts/cargo.sh`
//! sets). A missing interpreter or client fails the test: compatibility is not optional.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use neuroshard_swarm_gateway::{GatewayConfig, serve};
use serde_json::{Value, json};
use support::{FakeGenerator, KEY, MODEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_works_unchanged() {
    let python = std::env::var("NEUROSHARD_PYTHON").expect(
        "NEUROSHARD_PYTHON is not set: run the tests through scripts/cargo.sh, which provides \
         the Python environment with the openai client",
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_check.py");

    // Served the way main.rs serves it: `serve` loads the tokenizer from the configured file.
    let tok = support::tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let config = GatewayConfig {
        tokenizer: dir.path().join("tokenizer.json"),
        ..support::config()
    };
    tok.save(&config.tokenizer).unwrap();
    let generator = FakeGenerator::new(&tok);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config, listener, generator.clone(), async {
        let _ = stopped.await;
    }));

    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(format!("http://{addr}/v1"))
        .arg(KEY)
        .arg(MODEL)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("graceful shutdown took too long")
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the client script failed (is openai installed? scripts/setup-python.sh installs it):\n{stderr}"
    );
    let seen: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));

    assert_eq!(seen["models"], json!([MODEL]));

    let prompt = tok.encode("the quick brown fox").unwrap();
    let text = |seed: u64, prompt: &[u32], len: usize| {
        tok.decode(&generator.sequence(seed, prompt, len)).unwrap()
    };
    let completion = &seen["completion"];
    assert!(completion["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(completion["object"], "text_completion");
    assert_eq!(completion["text"], text(42, &prompt, 8));
    assert_eq!(completion["finish_reason"], "length");
    let usage = &completion["usage"];
    assert_eq!(usage["prompt_tokens"], prompt.len());
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(usage["total_tokens"], prompt.len() + 8);
    assert_eq!(
        seen["completion_stream"],
        json!({"texts": [text(42, &prompt, 8), text(43, &prompt, 8)], "finish_reasons": ["length", "length"]})
    );

    let chat_prompt = tok
        .encode("System:\nSpeak in verse.\n\nUser:\nSing of kings.\n\nAssistant:\n")
        .unwrap();
    let reply = text(7, &chat_prompt, 10).trim_start().to_owned();
    let chat = &seen["chat"];
    assert!(chat["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["role"], "assistant");
    assert_eq!(chat["content"], reply);
    assert_eq!(chat["finish_reason"], "length");
    assert_eq!(chat["usage"]["prompt_tokens"], chat_prompt.len());
    assert_eq!(chat["usage"]["completion_tokens"], 10);
    let stream = &seen["chat_stream"];
    assert_eq!(stream["content"], reply);
    assert_eq!(stream["roles"], json!(["assistant"]));
    assert_eq!(stream["finish_reason"], "length");
    assert_eq!(stream["usage"], chat["usage"]);

    assert_eq!(
        seen["wrong_key"],
        json!({"error": "AuthenticationError", "status": 401, "code": "invalid_api_key"})
    );
    assert_eq!(
        seen["unsupported"],
        json!({"error": "BadRequestError", "param": "response_format", "code": "unsupported_parameter"})
    );
}
