//! `neuroshard up` as a user runs it: the exact flags, the banner with the API and dashboard
//! URLs and a curl, a request with the given key, then Ctrl-C (SIGINT) stops every process it
//! started and the command exits 0. kill -9 of a worker: `up` restarts it, says so, and every
//! layer has two live holders again, unattended. kill -9 of a holder of each span in turn
//! while streams run through it: every stream ends with its undisturbed text. Also: nothing
//! to serve is a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use neuroshard_local::{free_port, http_get, http_request, spans_loaded};
use neuroshard_runtime::tls::TlsFiles;
use support::completions::{complete, live_spans, request, route, start_streams};

const KEY: &str = "sk-up-test-0123456789abcd";

/// Process ids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// A running `neuroshard up` that a failing test still stops: Ctrl-C on drop (so it stops
/// its own processes), SIGKILL if that does not end it.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `neuroshard up --workers 4` serving `ckpt` on `port` with [`KEY`], its state in `state`,
/// and `extra` flags; stdout piped for the test to read, stderr kept in `up.stderr` beside
/// `state`.
fn start_up(ckpt: &std::path::Path, port: u16, state: &std::path::Path, extra: &[&str]) -> Up {
    let stderr = std::fs::File::create(state.with_file_name("up.stderr")).unwrap();
    let child = Command::new(support::bin_dir().join("neuroshard"))
        .args(["up", "--workers", "4", "--checkpoint"])
        .arg(ckpt)
        .args([
            "--http-port",
            &port.to_string(),
            "--api-key",
            KEY,
            "--state-dir",
        ])
        .arg(state)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Up(child)
}

/// Everything `up` prints, as it prints it, read by a thread of its own.
struct Printed {
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Printed {
    fn follow(up: &mut Up) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = up.0.stdout.take().unwrap();
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        Self { lines, reader }
    }

    fn has(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(text))
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (up to 120 s) for the banner that says the swarm serves.
    fn wait_for_banner(&self, up: &mut Up) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.has("Ctrl-C stops everything") {
            assert!(
                Instant::now() < deadline && up.0.try_wait().unwrap().is_none(),
                "no banner: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything printed, once `up` has exited.
    fn finish(self) -> Vec<String> {
        let Self { lines, reader } = self;
        reader.join().unwrap();
        lines.lock().unwrap().clone()
    }
}

/// `up --train` on a corpus dataset, 4 inner steps per round, with `extra` flags, into a
/// checkpoint directory without weights; returns once the banner is printed.
fn start_training_up(dir: &std::path::Path, extra: &[&str]) -> (Up, Printed, u16) {
    let data = support::checkpoints::corpus_dataset(dir, 300);
    let port = free_port().unwrap();
    let mut args = vec![
        "--train",
        "--data",
        data.to_str().unwrap(),
        "--inner-steps",
        "4",
    ];
    args.extend_from_slice(extra);
    let mut up = start_up(&dir.join("ckpt"), port, &dir.join("state"), &args);
    let printed = Printed::follow(&mut up);
    printed.wait_for_banner(&mut up);
    (up, printed, port)
}

/// Ctrl-C: `up` stops everything and exits 0; returns everything it printed.
fn ctrl_c(mut up: Up, printed: Printed) -> Vec<String> {
    let sent = Command::new("kill")
        .args(["-INT", &up.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = up.0.wait().unwrap();
    let lines = printed.finish();
    assert!(status.success(), "exit {status}: {lines:?}");
    lines
}

/// `up` speaks mutual TLS between its processes; its state directory holds a certificate for
/// the harness side, which a test dials the workers with.
fn client_tls(state: &std::path::Path) -> TlsFiles {
    let tls_dir = state.join("tls");
    TlsFiles {
        cert_file: Some(tls_dir.join("client.crt")),
        key_file: Some(tls_dir.join("client.key")),
        ca_file: Some(tls_dir.join("ca.crt")),
        insecure_plaintext: false,
    }
}

/// Node `id` in the status document.
fn node(doc: &serde_json::Value, id: &str) -> serde_json::Value {
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in {doc}"))
}

/// Whether the four workers' swarm is whole: every layer held by two live nodes, and every
/// worker's span loaded.
fn whole(doc: &serde_json::Value, tls: &TlsFiles) -> bool {
    under_replicated(doc).is_empty() && spans_loaded(doc, tls) == 4
}

#[test]
fn up_serves_in_plaintext_when_asked_with_the_given_key_and_ctrl_c_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 9);
    let port = free_port().unwrap();
    // The opt-out from mutual TLS: it still serves, and says what it gave up, on the banner
    // and as a warning.
    let state = dir.path().join("state");
    let mut up = start_up(&ckpt, port, &state, &["--insecure-plaintext"]);
    let mut lines = BufReader::new(up.0.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C stops everything") {
            break;
        }
        assert!(Instant::now() < deadline, "no banner yet:\n{banner}");
    }
    let base = format!("http://127.0.0.1:{port}");
    for expected in [
        format!("API:        {base}/v1"),
        format!("Dashboard:  {base}/"),
        format!("API key:    {KEY}"),
        format!("curl -sN {base}/v1/completions"),
        "gRPC:       plaintext (--insecure-plaintext)".to_string(),
    ] {
        assert!(
            banner.contains(&expected),
            "missing {expected:?} in:\n{banner}"
        );
    }
    let started = children(up.0.id());
    assert_eq!(
        started.len(),
        6,
        "registry, 4 workers, gateway: {started:?}"
    );

    let timeout = Duration::from_secs(30);
    assert_eq!(http_get(port, "/readyz", timeout).unwrap().status, 200);
    let auth = format!("Bearer {KEY}");
    let reply = http_request(
        port,
        "POST",
        "/v1/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        r#"{"model":"neurollm","prompt":"the king","max_tokens":8}"#,
        timeout,
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Ctrl-C: everything stops and the command exits cleanly.
    let sent = Command::new("kill")
        .args(["-INT", &up.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = up.0.wait().unwrap();
    assert!(
        status.success(),
        "exit {status}; output after Ctrl-C: {rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("nothing left running")),
        "{rest:?}"
    );
    for pid in started {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
        assert!(!alive, "process {pid} outlived neuroshard up");
    }
    assert!(http_get(port, "/healthz", Duration::from_secs(1)).is_err());
    let warned = std::fs::read_to_string(state.with_file_name("up.stderr")).unwrap();
    assert!(warned.contains("warning: --insecure-plaintext"), "{warned}");
}

/// `up --train` with a dataset and a checkpoint directory without weights: the swarm starts
/// from the seeded initialisation, both pipelines train while the gateway answers, the status
/// document shows them, and Ctrl-C stops everything.
#[test]
fn up_train_trains_both_pipelines_from_the_seed_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let (up, printed, port) = start_training_up(dir.path(), &[]);
    assert!(printed.has("the swarm starts from the seeded initialisation"));
    assert!(printed.has("Training:   every pipeline, 4 inner steps per round"));
    assert!(ckpt.join("config.json").exists() && ckpt.join("tokenizer.json").exists());
    assert!(!ckpt.join("model.safetensors").exists());

    // Both pipelines train: each reports steps, tokens and a finite loss, and between them
    // they hold every layer twice over; rounds of 4 steps come and go.
    let deadline = Instant::now() + Duration::from_secs(120);
    let doc = loop {
        let doc = support::detail_status(port, KEY);
        let pipelines = doc["training"]["pipelines"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let trained = pipelines.len() == 2
            && pipelines.iter().all(|p| {
                p["round"].as_u64() >= Some(2) && p["loss"].as_f64().is_some_and(f64::is_finite)
            });
        if trained && doc["training"]["state"] == "running" {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "pipelines did not train: {}",
            doc["training"]
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let training = &doc["training"];
    // Round 1 closed at the aggregator before round 2 started: its weights are served, and
    // the round is listed with its held-out loss and what it accepted.
    assert!(training["served_round"].as_u64() >= Some(1), "{training}");
    let round = &training["rounds"][0];
    assert_eq!(round["round"], 1, "{training}");
    assert!(
        round["held_out"].as_f64().is_some_and(f64::is_finite),
        "{round}"
    );
    assert_eq!(round["rule"], "trimmed_mean");
    assert_eq!(round["accepted"], 4, "{round}");
    assert!(round["bytes"].as_u64() > Some(0));
    assert!(printed.has("Aggregator: https://127.0.0.1:"));
    let mut stages = Vec::new();
    for p in training["pipelines"].as_array().unwrap() {
        assert!(p["tokens"].as_u64().unwrap() > 0, "{p}");
        assert!(!p["losses"].as_array().unwrap().is_empty(), "{p}");
        stages.extend(p["nodes"].as_array().unwrap().iter().cloned());
    }
    stages.sort_by_key(|n| n.to_string());
    stages.dedup();
    assert_eq!(
        stages.len(),
        4,
        "two disjoint pipelines of the four workers: {training}"
    );
    // The gateway answers while they train.
    complete(port, KEY, "the king", 6);

    let lines = ctrl_c(up, printed);
    assert!(
        lines.iter().any(|l| l.contains("nothing left running")),
        "{lines:?}"
    );
}

/// `up --train --ledger`: the workers claim their rounds' rewards for the local wallet, and
/// the gateway charges inference to it — refused (429 `insufficient_quota`) until training
/// has paid, then served and settled.
#[test]
fn up_train_with_the_ledger_pays_training_into_the_wallet_inference_spends() {
    let dir = tempfile::tempdir().unwrap();
    let (up, printed, port) = start_training_up(dir.path(), &["--ledger"]);
    assert!(printed.has("Ledger:     https://127.0.0.1:"));
    assert!(printed.has("neuroshard wallet balance --key"));

    let body = r#"{"model":"neurollm","prompt":"the king","max_tokens":6,"temperature":0}"#;
    let auth = format!("Bearer {KEY}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut refused = 0;
    let answered = loop {
        let r = http_request(
            port,
            "POST",
            "/v1/completions",
            &headers,
            body,
            Duration::from_secs(60),
        )
        .unwrap();
        match r.status {
            200 => break json(&r.body),
            429 => {
                assert!(r.body.contains("insufficient_quota"), "{}", r.body);
                refused += 1;
            }
            other => panic!("{other}: {}", r.body),
        }
        assert!(
            Instant::now() < deadline,
            "training never paid for a request ({refused} refused)"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let cost = &answered["usage"]["cost"];
    println!("answered after {refused} refusals: {cost}");
    assert!(cost["charged"].as_i64() > Some(0), "{answered}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let billing = support::detail_status(port, KEY)["billing"].clone();
        if billing["requests_settled"].as_u64() >= Some(1) {
            assert_eq!(
                billing["recent"][0]["charged"], cost["charged"],
                "{billing}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not settled: {billing}");
        std::thread::sleep(Duration::from_millis(200));
    }
    ctrl_c(up, printed);
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Layers whose live holders number fewer than two, in the status document.
fn under_replicated(status: &serde_json::Value) -> Vec<u64> {
    let live: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "live")
        .filter_map(|n| n["id"].as_str())
        .collect();
    status["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["holders"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h.as_str().is_some_and(|h| live.contains(&h)))
                .count()
                < 2
        })
        .map(|l| l["index"].as_u64().unwrap())
        .collect()
}

/// `neuroshard up --workers 4` (every node full), kill -9 of a worker: `up` restarts it with
/// the same key, it re-registers as the same node and loads a span, and every layer is held
/// by two live nodes again within 60 s, without anyone doing anything. kill -9 of the
/// registry, then of the gateway: each is restarted and the swarm answers again. Ctrl-C
/// afterwards restarts nothing and leaves nothing running.
#[test]
fn up_restarts_a_killed_worker_until_every_layer_has_two_live_holders() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 9);
    let port = free_port().unwrap();
    let state = dir.path().join("state");
    let mut up = start_up(&ckpt, port, &state, &[]);
    let client_tls = client_tls(&state);
    let printed = Printed::follow(&mut up);
    let has = |text: &str| printed.has(text);
    printed.wait_for_banner(&mut up);
    let auth = format!("Bearer {KEY}");
    let timeout = Duration::from_secs(30);
    let status = || support::detail_status(port, KEY);
    let before = status();
    assert!(under_replicated(&before).is_empty(), "{before}");
    // The victim: a holder of layer 0.
    let victim = before["layers"][0]["holders"][0]
        .as_str()
        .unwrap()
        .to_string();
    let node = |doc: &serde_json::Value| node(doc, &victim);
    let old_pid = node(&before)["pid"].as_u64().unwrap() as u32;
    assert!(children(up.0.id()).contains(&old_pid));
    let killed = Instant::now();
    support::signal(old_pid, "KILL");

    // Unattended: restarted (a new pid, a child of `up`), live again with its span loaded,
    // and every layer held by two live nodes.
    let recovered = loop {
        let doc = status();
        let shown = node(&doc);
        let new_pid = shown["pid"].as_u64().map(|p| p as u32);
        if new_pid.is_some_and(|p| p != old_pid)
            && shown["state"] == "live"
            && shown["span"][1].as_u64() > shown["span"][0].as_u64()
            && whole(&doc, &client_tls)
        {
            break doc;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "not whole again 60 s after kill -9 of {victim}: {doc}\n{:?}",
            printed.lines()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    println!(
        "two live holders per layer again {:.1} s after kill -9",
        killed.elapsed().as_secs_f64()
    );
    let new_pid = node(&recovered)["pid"].as_u64().unwrap() as u32;
    assert!(
        children(up.0.id()).contains(&new_pid),
        "the new worker is not up's child"
    );
    assert!(
        has("(exit: signal 9), restart 1"),
        "no restart line: {:?}",
        printed.lines()
    );
    let table: serde_json::Value =
        json(&std::fs::read_to_string(state.join("processes.json")).unwrap());
    let restarted: Vec<&serde_json::Value> = table
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["restarts"] == 1)
        .collect();
    assert_eq!(restarted.len(), 1, "{table}");
    assert!(
        restarted[0]["name"]
            .as_str()
            .unwrap()
            .starts_with("worker-")
    );
    assert_eq!(restarted[0]["pid"], new_pid);
    assert_eq!(restarted[0]["last_exit"], "signal 9");
    // The swarm serves again.
    let complete = || {
        http_request(
            port,
            "POST",
            "/v1/completions",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            r#"{"model":"neurollm","prompt":"the king","max_tokens":8}"#,
            timeout,
        )
    };
    let reply = complete().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The registry and the gateway come back too: kill -9 each, and the swarm answers again.
    for service in ["layer-registry", "swarm-gateway"] {
        let pid = children(up.0.id())
            .into_iter()
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == service)
            })
            .unwrap_or_else(|| panic!("no {service} process"));
        support::signal(pid, "KILL");
        let killed = Instant::now();
        loop {
            let serves = complete().is_ok_and(|r| r.status == 200);
            if serves && has(&format!("restarted {service} (exit: signal 9), restart 1")) {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "{service} not back 60 s after kill -9: {:?}",
                printed.lines()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let doc = status();
    assert!(under_replicated(&doc).is_empty(), "{doc}");

    // Ctrl-C: nothing is restarted on the way down and nothing is left running.
    let started = children(up.0.id());
    support::signal(up.0.id(), "INT");
    let exit = up.0.wait().unwrap();
    let printed = printed.finish();
    assert!(exit.success(), "exit {exit}: {printed:?}");
    let stopping = printed
        .iter()
        .position(|l| l.contains("==> stopping"))
        .unwrap();
    assert!(
        !printed[stopping..]
            .iter()
            .any(|l| l.contains("restarted worker") || l.contains("exited (")),
        "{printed:?}"
    );
    assert!(printed.iter().any(|l| l.contains("nothing left running")));
    for pid in started {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
        assert!(!alive, "process {pid} outlived neuroshard up");
    }
}

#[test]
fn up_without_anything_to_serve_says_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::bin_dir().join("neuroshard"))
        .args(["up", "--http-port", "0", "--checkpoint"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no trained checkpoint") && err.contains("--data"),
        "{err}"
    );
}

/// A short key and a taken port are said before anything starts (no training, no process),
/// naming the flag; the key itself is never printed.
#[test]
fn up_checks_the_key_and_the_port_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let up = |args: &[&str]| {
        let out = Command::new(support::bin_dir().join("neuroshard"))
            .arg("up")
            .args(args)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--data")
            .arg(dir.path().join("no-data"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!printed.contains("training"), "it started work: {printed}");
        printed
    };
    let err = up(&["--api-key", "tiny-key", "--http-port", "0"]);
    assert!(err.contains("--api-key is 8 characters"), "{err}");
    assert!(!err.contains("tiny-key"), "the key was printed: {err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = up(&["--http-port", &port]);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("--http-port"),
        "{err}"
    );
    assert!(
        !dir.path().join("state").join("logs").exists(),
        "a process was started"
    );
}

/// Four greedy prompts, long enough that a kill lands while they stream.
const PROMPTS: [&str; 4] = ["the king", "fair lady", "speak thou", "noble lord"];
const TOKENS: usize = 160;

/// `neuroshard up --workers 4` (every layer held twice), four streamed generations at a time:
/// kill -9 the holder of each span in turn that carries the most of the streams, while they
/// run. Every stream ends with the text an undisturbed run gives (at least one failed over, so
/// the kill did land mid-stream), and `up` makes the swarm whole again (two live holders per
/// layer, every span loaded) before the next span's turn.
#[test]
fn up_streams_survive_kill_9_of_a_holder_of_each_span_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 9);
    let port = free_port().unwrap();
    let state = dir.path().join("state");
    let mut up = start_up(&ckpt, port, &state, &[]);
    let printed = Printed::follow(&mut up);
    printed.wait_for_banner(&mut up);
    let tls = client_tls(&state);
    let status = || support::detail_status(port, KEY);
    let wait_until_whole = |why: &str, condition: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let doc = status();
            if whole(&doc, &tls) && condition(&doc) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not whole within 60 s {why}: {doc}\n{:?}",
                printed.lines()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait_until_whole("at start", &|_| true);
    let expected: Vec<String> = PROMPTS
        .iter()
        .map(|p| complete(port, KEY, p, TOKENS))
        .collect();
    let spans: BTreeSet<(u64, u64)> = live_spans(&status()).into_values().collect();
    assert!(
        spans.len() >= 2,
        "the model is not cut by layers: {spans:?}"
    );

    for span in spans {
        let (streams, ids) = start_streams(port, KEY, &PROMPTS, TOKENS);
        let doc = status();
        // Every route tiles the model, so each stream passes one holder of this span.
        let mut carried: BTreeMap<String, usize> = live_spans(&doc)
            .into_iter()
            .filter(|(_, s)| *s == span)
            .map(|(id, _)| (id, 0))
            .collect();
        for id in &ids {
            for hop in route(request(&doc, id)) {
                if let Some(count) = carried.get_mut(&hop) {
                    *count += 1;
                }
            }
        }
        let (victim, through) = carried
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .unwrap_or_else(|| panic!("no live holder of {span:?}: {doc}"));
        assert!(through > 0, "no stream passes a holder of {span:?}: {doc}");
        let old_pid = node(&doc, &victim)["pid"].as_u64().unwrap() as u32;
        support::signal(old_pid, "KILL");

        for (handle, want) in streams.into_iter().zip(&expected) {
            assert_eq!(
                &handle.join().unwrap(),
                want,
                "a stream's text changed when {victim} (holding {span:?}) was killed"
            );
        }
        let doc = status();
        let failovers: u64 = ids
            .iter()
            .map(|id| request(&doc, id)["failovers"].as_u64().unwrap())
            .sum();
        assert!(
            failovers >= 1,
            "no stream failed over: the kill of {victim} came after they ended"
        );
        wait_until_whole(&format!("after kill -9 of {victim}"), &|doc| {
            node(doc, &victim)["pid"]
                .as_u64()
                .is_some_and(|pid| pid as u32 != old_pid)
        });
    }
    drop(up);
    printed.finish();
}
