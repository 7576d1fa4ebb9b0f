//! `neuroshard up` as a user runs it: the exact flags, the banner with the API and dashboard
//! URLs and a curl, a request with the given key, then Ctrl-C (SIGINT) stops every process it
//! started and the command exits 0. Also: nothing to serve is a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use neuroshard_local::{free_port, http_get, http_request};

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

#[test]
fn up_serves_with_the_given_key_and_ctrl_c_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 9);
    let port = free_port().unwrap();
    let mut up = Command::new(support::bin_dir().join("neuroshard"))
        .args(["up", "--workers", "4", "--checkpoint"])
        .arg(&ckpt)
        .args([
            "--http-port",
            &port.to_string(),
            "--api-key",
            KEY,
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
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
    ] {
        assert!(
            banner.contains(&expected),
            "missing {expected:?} in:\n{banner}"
        );
    }
    let started = children(up.id());
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
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = up.wait().unwrap();
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
}

#[test]
fn up_without_anything_to_serve_says_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::bin_dir().join("neuroshard"))
        .args(["up", "--checkpoint"])
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
