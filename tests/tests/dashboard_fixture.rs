//! The dashboard page against the committed example status document, in headless Chromium:
//! a loopback HTTP server serves the page at `/` and the fixture (or a variant, or failures) at
//! `/api/v1/status`, as the gateway will. The screenshot of the full fixture is kept under
//! cargo's per-test temp dir and its path printed, for a person to look at.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use neuroshard_tests::browser::{Chromium, attribute, element_text, start_tags};
use serde_json::Value;

const PAGE: &str = include_str!("../../services/swarm-gateway/assets/dashboard.html");
const FIXTURE: &str =
    include_str!("../../services/swarm-gateway/assets/fixtures/status-example.json");

/// The status endpoint's answer to its `n`-th request (from 0): HTTP status and body.
type StatusAnswer = dyn Fn(usize) -> (u16, String) + Send + Sync;

/// A loopback HTTP/1.1 server for the page and its status endpoint, stopped on drop.
struct PageServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    status_requests: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl PageServer {
    fn start(status: impl Fn(usize) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let status_requests = Arc::new(AtomicUsize::new(0));
        let status: Arc<StatusAnswer> = Arc::new(status);
        let accept = {
            let stop = stop.clone();
            let counter = status_requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // One thread per connection: Chromium opens speculative connections that
                    // never send a request, and those must not hold up the real ones.
                    let status = status.clone();
                    let counter = counter.clone();
                    std::thread::spawn(move || serve(stream, &*status, &counter));
                }
            })
        };
        Self {
            addr,
            stop,
            status_requests,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn status_requests(&self) -> usize {
        self.status_requests.load(Ordering::SeqCst)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(mut stream: TcpStream, status: &StatusAnswer, counter: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let (code, content_type, body) = match path {
        "/" => (200, "text/html; charset=utf-8", PAGE.to_string()),
        "/api/v1/status" => {
            let (code, body) = status(counter.fetch_add(1, Ordering::SeqCst));
            (code, "application/json", body)
        }
        _ => (404, "text/plain", "not found".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).unwrap()
}

fn live_nodes(doc: &Value) -> usize {
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "live")
        .count()
}

fn chromium() -> Chromium {
    Chromium::locate().unwrap().window_size(1440, 1800)
}

fn body_state(dom: &str) -> String {
    attribute(start_tags(dom, "body")[0], "data-state").unwrap()
}

/// The start tag of the element with `id`.
fn tag_with_id<'a>(dom: &'a str, name: &str, id: &str) -> &'a str {
    start_tags(dom, name)
        .into_iter()
        .find(|t| attribute(t, "id").as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no <{name} id={id}> in the DOM"))
}

/// Every plotted series: its name and path data.
fn series(dom: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (tag, data) in [("path", "d"), ("polyline", "points")] {
        for t in start_tags(dom, tag) {
            if attribute(t, "class").as_deref() == Some("series") {
                found.push((
                    attribute(t, "data-series").unwrap_or_default(),
                    attribute(t, data).unwrap_or_default(),
                ));
            }
        }
    }
    found
}

#[test]
fn dashboard_draws_the_example_status() {
    let doc = fixture();
    let server = PageServer::start(|_| (200, FIXTURE.to_string()));
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-fixture.png");
    let dom = chromium().render(&server.url(), &shot).unwrap();
    println!("dashboard screenshot: {}", shot.display());

    assert_eq!(body_state(&dom), "live");
    let live = live_nodes(&doc);
    assert!(live > 0 && live < doc["nodes"].as_array().unwrap().len());
    assert_eq!(
        element_text(&dom, "node-count").as_deref(),
        Some(live.to_string().as_str())
    );

    // Each series is drawn from the fixture's points (one M plus an L per further point).
    let drawn = series(&dom);
    assert!(drawn.iter().all(|(_, d)| !d.trim().is_empty()), "{drawn:?}");
    for (name, points) in [
        ("throughput", &doc["throughput"]["history"]),
        ("loss", &doc["training"]["losses"]),
        ("held-out", &doc["training"]["held_out"]),
        ("pipeline-p0", &doc["training"]["pipelines"][0]["losses"]),
        ("pipeline-p1", &doc["training"]["pipelines"][1]["losses"]),
    ] {
        let (_, d) = drawn
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no series {name}: {drawn:?}"));
        assert_eq!(d.matches('L').count() + 1, points.as_array().unwrap().len());
    }
    // The swarm's pipelines are named with their latest loss and the round served.
    let detail = element_text(&dom, "training-detail").unwrap();
    assert!(
        detail.starts_with("2 pipelines · p0 ") && detail.ends_with("serving round 11"),
        "{detail}"
    );

    // The aggregator's rounds, newest first, the one with flagged work marked.
    let rows: Vec<&str> = start_tags(&dom, "tr")
        .into_iter()
        .filter(|t| attribute(t, "class").is_some_and(|c| c.starts_with("round")))
        .collect();
    let rounds = doc["training"]["rounds"].as_array().unwrap();
    assert_eq!(rows.len(), rounds.len());
    assert_eq!(
        attribute(rows[0], "class").as_deref(),
        Some("round flagged")
    );
    let table = &dom[dom.find("id=\"round-rows\"").unwrap()..];
    let table = &table[..table.find("</tbody>").unwrap()];
    let (newest, oldest) = (
        table.find(">4.838<").unwrap(),
        table.find(">4.912<").unwrap(),
    );
    assert!(newest < oldest, "newest first: {table}");
    assert!(table.contains(">trimmed_mean<"), "{table}");

    // The ledger: NEURO supply (cut to two decimals), minted and burned exactly, the
    // charges.
    assert_eq!(element_text(&dom, "neuro-supply").unwrap(), "12.49");
    let minted = element_text(&dom, "neuro-detail").unwrap();
    assert_eq!(minted, "minted 12.5 · burned 0.000021424");
    let charges = start_tags(&dom, "tr")
        .into_iter()
        .filter(|t| attribute(t, "class").as_deref() == Some("charge"))
        .count();
    assert_eq!(charges, doc["billing"]["recent"].as_array().unwrap().len());
    assert!(
        element_text(&dom, "wallets")
            .unwrap()
            .contains("holds 1.99957152 NEURO"),
        "{dom}"
    );

    // One cell per (node, layer) the node holds; dead nodes keep their span's cells.
    let layers = doc["layers"].as_array().unwrap();
    let expected_cells: usize = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let (lo, hi) = (
                n["span"][0].as_u64().unwrap(),
                n["span"][1].as_u64().unwrap(),
            );
            layers
                .iter()
                .filter(|l| {
                    let i = l["index"].as_u64().unwrap();
                    (lo..hi).contains(&i) || l["holders"].as_array().unwrap().contains(&n["id"])
                })
                .count()
        })
        .sum();
    let cells = start_tags(&dom, "rect")
        .into_iter()
        .filter(|t| attribute(t, "class").as_deref() == Some("cell"))
        .count();
    assert_eq!(cells, expected_cells);

    // The layers under the replica target are the ones marked.
    let min = doc["replicas"]["min_replicas"].as_u64().unwrap() as usize;
    let under: Vec<String> = layers
        .iter()
        .filter(|l| l["holders"].as_array().unwrap().len() < min)
        .map(|l| l["index"].to_string())
        .collect();
    assert!(
        !under.is_empty(),
        "the fixture should show a degraded layer"
    );
    let marked: Vec<String> = start_tags(&dom, "g")
        .into_iter()
        .filter(|t| attribute(t, "data-under").as_deref() == Some("true"))
        .map(|t| attribute(t, "data-layer").unwrap())
        .collect();
    assert_eq!(marked, under);
    let health = tag_with_id(&dom, "div", "replica-health");
    assert_eq!(
        attribute(health, "data-degraded").as_deref(),
        Some(doc["replicas"]["degraded"].to_string().as_str())
    );

    // Every request is listed, and failovers stand out.
    let rows: Vec<&str> = start_tags(&dom, "div")
        .into_iter()
        .filter(|t| attribute(t, "data-request").is_some())
        .collect();
    let requests = doc["requests"].as_array().unwrap();
    assert_eq!(rows.len(), requests.len());
    for (row, request) in rows.iter().zip(requests) {
        assert_eq!(
            attribute(row, "data-request"),
            request["id"].as_str().map(String::from)
        );
        let failover = request["failovers"].as_u64().unwrap() > 0;
        assert_eq!(
            attribute(row, "class").unwrap().contains("has-failover"),
            failover
        );
    }

    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 50_000);
}

#[test]
fn dashboard_escapes_text_and_shows_when_no_training_runs() {
    let mut doc = fixture();
    doc["training"] = Value::Null;
    doc["requests"][0]["error"] = Value::from(r#"<img id="injected" src="x"> & more"#);
    doc["nodes"][0]["endpoint"] = Value::from(r#"<b id="injected-too">x</b>"#);
    let body = doc.to_string();
    let server = PageServer::start(move |_| (200, body.clone()));
    let dom = chromium().dump_dom(&server.url()).unwrap();

    assert_eq!(body_state(&dom), "live");
    assert!(!dom.contains("<img"), "markup from JSON became an element");
    assert!(
        !dom.contains("<b id="),
        "markup from JSON became an element"
    );
    assert!(dom.contains(r#"&lt;img id="injected" src="x"&gt; &amp; more"#));

    assert!(attribute(tag_with_id(&dom, "div", "loss-empty"), "hidden").is_none());
    assert!(attribute(tag_with_id(&dom, "svg", "loss-chart"), "hidden").is_some());
    assert!(dom.contains("No training running"));
    let drawn: Vec<String> = series(&dom).into_iter().map(|(name, _)| name).collect();
    assert_eq!(drawn, ["throughput"]);
    assert_eq!(
        element_text(&dom, "training-round").as_deref(),
        Some("Idle")
    );
}

#[test]
fn dashboard_draws_the_public_summary_and_offers_the_detail_view() {
    let mut doc = fixture();
    doc["view"] = Value::from("summary");
    for node in doc["nodes"].as_array_mut().unwrap() {
        node["endpoint"] = Value::Null;
        node["pid"] = Value::Null;
    }
    for request in doc["requests"].as_array_mut().unwrap() {
        request["error"] = Value::Null;
    }
    let body = doc.to_string();
    let server = PageServer::start(move |_| (200, body.clone()));
    let dom = chromium().dump_dom(&server.url()).unwrap();

    assert_eq!(body_state(&dom), "live");
    assert_eq!(element_text(&dom, "view-name").as_deref(), Some("summary"));
    assert!(attribute(tag_with_id(&dom, "input", "key-input"), "hidden").is_none());
    assert_eq!(
        element_text(&dom, "node-count"),
        Some(live_nodes(&doc).to_string())
    );
}

#[test]
fn dashboard_shows_that_the_status_cannot_be_fetched() {
    let server = PageServer::start(|_| (503, "registry unreachable".to_string()));
    let dom = chromium().dump_dom(&server.url()).unwrap();

    assert_eq!(body_state(&dom), "error");
    assert!(attribute(tag_with_id(&dom, "div", "conn-banner"), "hidden").is_none());
    let error = element_text(&dom, "conn-error").unwrap();
    assert!(error.contains("503"), "{error}");
    assert!(
        server.status_requests() >= 2,
        "the page should keep retrying"
    );
}

#[test]
fn dashboard_recovers_when_the_status_comes_back() {
    let doc = fixture();
    let server = PageServer::start(|n| {
        if n < 2 {
            (503, "not yet".to_string())
        } else {
            (200, FIXTURE.to_string())
        }
    });
    let dom = chromium().dump_dom(&server.url()).unwrap();

    assert!(server.status_requests() >= 3);
    assert_eq!(body_state(&dom), "live");
    assert!(attribute(tag_with_id(&dom, "div", "conn-banner"), "hidden").is_some());
    assert_eq!(
        element_text(&dom, "node-count"),
        Some(live_nodes(&doc).to_string())
    );
}
