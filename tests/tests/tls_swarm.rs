//! The whole local swarm over mutual TLS: the registry, four shard workers and the gateway's
//! hops all serve and dial with certificates from one test CA. A completion through the
//! gateway equals the in-process model's; every endpoint the registry publishes is `https`;
//! a worker refuses plaintext and TLS clients without a certificate from the CA; and after
//! kill -9 of a worker the gateway's failover reconnects over TLS to the replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use neuroshard_local::http_request;
use neuroshard_local::{LocalSwarm, SwarmOptions};
use neuroshard_proto::registry::v1::GetAssignmentRequest;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::worker::v1::InfoRequest;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_runtime::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

const KEY: &str = "sk-test-0123456789abcdef";

struct Pki {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// A CA the swarm does not trust, with a certificate of its own.
    stranger: TlsFiles,
}

fn write(dir: &Path, name: &str, pem: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// A CA and a leaf certificate for `127.0.0.1` signed by it (no extended key usage, so the
/// same pair serves and identifies clients), written as PEM files into `dir`.
fn issue(dir: &Path, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    (
        write(dir, &format!("{prefix}ca.crt"), ca.pem()),
        write(dir, &format!("{prefix}tls.crt"), leaf.pem()),
        write(dir, &format!("{prefix}tls.key"), leaf_key.serialize_pem()),
    )
}

fn pki(dir: &Path) -> Pki {
    let (ca_file, cert_file, key_file) = issue(dir, "");
    let (_, other_cert, other_key) = issue(dir, "other-");
    Pki {
        stranger: TlsFiles {
            cert_file: Some(other_cert),
            key_file: Some(other_key),
            ca_file: Some(ca_file.clone()),
            insecure_plaintext: false,
        },
        ca_file,
        cert_file,
        key_file,
    }
}

fn complete(port: u16, prompt: &str, max_tokens: usize) -> String {
    let body = format!(
        r#"{{"model":"neurollm","prompt":"{prompt}","max_tokens":{max_tokens},"temperature":0}}"#
    );
    let auth = format!("Bearer {KEY}");
    let r = http_request(
        port,
        "POST",
        "/v1/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ],
        &body,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    doc["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Whether `Info` on the worker at `url` answers when dialled with `tls`.
async fn worker_answers(tls: &TlsFiles, url: &str) -> bool {
    let Ok(channel) = tls.connect(url).await else {
        return false;
    };
    ShardWorkerClient::new(channel)
        .info(InfoRequest {})
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_runs_over_mutual_tls_and_refuses_plaintext_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (ckpt, model, tokenizer) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 33);
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.http_port = 0;
    options.api_key = KEY.into();
    let swarm_tls = TlsFiles {
        cert_file: Some(pki.cert_file.clone()),
        key_file: Some(pki.key_file.clone()),
        ca_file: Some(pki.ca_file.clone()),
        insecure_plaintext: false,
    };
    options.tls = Some(swarm_tls.clone());
    let mut swarm = tokio::task::spawn_blocking(move || {
        LocalSwarm::start(&options, Duration::from_secs(120), |s| println!("{s}")).unwrap()
    })
    .await
    .unwrap();
    let port = swarm.gateway_port;
    assert!(swarm.registry_url.starts_with("https://"));

    // Every node the registry publishes is reached over https.
    let doc = support::detail_status(port, KEY);
    let endpoints: Vec<String> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["endpoint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(endpoints.len(), 4, "{doc}");
    assert!(
        endpoints.iter().all(|e| e.starts_with("https://")),
        "{endpoints:?}"
    );

    // Served through TLS hops, the text is the in-process model's.
    let prompt = "the king hath";
    let expected = support::checkpoints::greedy_text(&model, &tokenizer, prompt, 24);
    let served = tokio::task::spawn_blocking(move || complete(port, prompt, 24))
        .await
        .unwrap();
    assert_eq!(served, expected);

    // A worker answers a client with the CA's certificate, and nobody else: not plaintext,
    // not TLS without a client certificate, not a certificate from another CA.
    let worker_url = &endpoints[0];
    assert!(worker_answers(&swarm_tls, worker_url).await);
    let plain = worker_url.replacen("https://", "http://", 1);
    if let Ok(mut client) = ShardWorkerClient::connect(plain).await {
        assert!(client.info(InfoRequest {}).await.is_err());
    }
    let anonymous = TlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        ..TlsFiles::default()
    };
    assert!(!worker_answers(&anonymous, worker_url).await);
    assert!(!worker_answers(&pki.stranger, worker_url).await);
    // The registry likewise.
    let registry_plain = swarm.registry_url.replacen("https://", "http://", 1);
    if let Ok(mut client) = LayerRegistryClient::connect(registry_plain).await {
        assert!(
            client
                .get_assignment(GetAssignmentRequest {})
                .await
                .is_err()
        );
    }
    let channel = swarm_tls.connect(&swarm.registry_url).await.unwrap();
    let assignment = LayerRegistryClient::new(channel)
        .get_assignment(GetAssignmentRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(assignment.nodes.len(), 4);

    // kill -9 one worker: the gateway fails over to a replica, dialling it over TLS.
    swarm.workers[0].process.kill();
    let served = tokio::task::spawn_blocking(move || complete(port, prompt, 24))
        .await
        .unwrap();
    assert_eq!(served, expected);

    // Restarted, it registers again over mutual TLS and is placed; the status shows its new
    // process.
    let node = swarm.workers[0].node_id.clone();
    let swarm = tokio::task::spawn_blocking(move || {
        swarm.restart_worker(&node).unwrap();
        swarm.wait_until_ready(Duration::from_secs(60)).unwrap();
        swarm
    })
    .await
    .unwrap();
    let doc = support::detail_status(port, KEY);
    let restarted = &swarm.workers[0];
    let shown = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == restarted.node_id.as_str())
        .unwrap();
    assert_eq!(shown["state"], "live");
    assert_eq!(shown["pid"], restarted.process.pid(), "{shown}");
    tokio::task::spawn_blocking(move || swarm.stop())
        .await
        .unwrap();
}
