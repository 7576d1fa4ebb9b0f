//! Sessions belong to the caller that opened them. Under mutual TLS another certificate can
//! neither run, replay, stream into nor end a session it did not open (PERMISSION_DENIED,
//! naming the field, never repeating the id); without client certificates, what guards a
//! session is that its id cannot be guessed, so guessable ids are refused.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-shard-worker --test ownership

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::path::{Path, PathBuf};

use neuroshard_proto::worker::v1::{ForwardRequest, ReplayRequest};
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_shard_worker::client::{ClientOptions, WorkerClient};
use neuroshard_shard_worker::compute::ComputeOptions;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use support::{full_span, session_id, tokens};
use tonic::{Code, Status};

const OPTIONS: ComputeOptions = ComputeOptions {
    max_decode_batch: 16,
    prefill_chunk_positions: 256,
};

/// One CA and a leaf for 127.0.0.1 per name, as PEM files in `dir`: the files each party
/// serves or dials with.
fn pki(dir: &Path, names: &[&str]) -> Vec<TlsFiles> {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let write = |name: String, pem: String| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_file = write("ca.crt".into(), ca.pem());
    names
        .iter()
        .map(|name| {
            let key = KeyPair::generate().unwrap();
            let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            TlsFiles {
                cert_file: Some(write(format!("{name}.crt"), leaf.pem())),
                key_file: Some(write(format!("{name}.key"), key.serialize_pem())),
                ca_file: Some(ca_file.clone()),
                insecure_plaintext: false,
            }
        })
        .collect()
}

fn forward(session: &str, tokens: &[i64], position: u32) -> ForwardRequest {
    ForwardRequest {
        session_id: session.to_string(),
        span: full_span(),
        tokens: tokens.to_vec(),
        hidden: None,
        position,
    }
}

/// Refused as another caller's session, without the id in the message.
fn assert_not_yours(result: Result<impl std::fmt::Debug, Status>, session: &str, what: &str) {
    let err = result.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
    assert!(err.message().contains("session_id"), "{what}: {err:?}");
    assert!(
        !err.message().contains(session),
        "{what} echoes the id: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_a_session_answers_only_to_the_certificate_that_opened_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = pki(dir.path(), &["worker", "alice", "mallory"]);
    let url = support::serve(
        support::state(support::model(), OPTIONS),
        files[0].server().unwrap(),
    )
    .await;
    assert!(url.starts_with("https://"));
    let dial = |tls: &TlsFiles, options: ClientOptions| {
        let (tls, url) = (tls.clone(), url.clone());
        async move { WorkerClient::new(tls.connect(&url).await.unwrap(), options) }
    };
    let mut alice = dial(&files[1], ClientOptions::default()).await;
    let mut mallory = dial(&files[2], ClientOptions::default()).await;
    let streaming = ClientOptions {
        stream_threshold_bytes: 0,
        ..ClientOptions::default()
    };
    let mut mallory_streaming = dial(&files[2], streaming).await;

    let session = session_id();
    let prompt = tokens(6, 1);
    let opened = alice.forward(forward(&session, &prompt, 0)).await.unwrap();
    assert_eq!(opened.position, 6);

    assert_not_yours(
        mallory.forward(forward(&session, &[5], 6)).await,
        &session,
        "Forward",
    );
    assert_not_yours(
        mallory_streaming.forward(forward(&session, &[5], 6)).await,
        &session,
        "ForwardStream",
    );
    let replay = ReplayRequest {
        session_id: session.clone(),
        span: full_span(),
        tokens: tokens(3, 9),
        hidden: None,
    };
    assert_not_yours(mallory.replay(replay.clone()).await, &session, "Replay");
    assert_not_yours(
        mallory_streaming.replay(replay).await,
        &session,
        "ReplayStream",
    );
    assert_not_yours(mallory.end_session(&session).await, &session, "EndSession");

    // Nothing Mallory sent reached the session: Alice goes on at position 6.
    let step = alice.forward(forward(&session, &[5], 6)).await.unwrap();
    assert_eq!(step.position, 7);
    assert_eq!(alice.info().await.unwrap().sessions, 1);
    alice.end_session(&session).await.unwrap();
    assert_eq!(mallory.info().await.unwrap().sessions, 0);
    // Mallory's own sessions work as anyone's do.
    let own = session_id();
    mallory.forward(forward(&own, &prompt, 0)).await.unwrap();
    mallory.end_session(&own).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_certificates_guessable_session_ids_are_refused() {
    let url = support::serve(support::state(support::model(), OPTIONS), None).await;
    let mut worker = WorkerClient::connect(&url, ClientOptions::default())
        .await
        .unwrap();
    let prompt = tokens(4, 2);
    // What the gateway sends today: a response id (which its client sees) and 32 random bits.
    for guessable in ["s1", "cmpl-Zx81kPq0aaaaaaaaaaaaaaaa-0badcafe", "00000001"] {
        let err = worker
            .forward(forward(guessable, &prompt, 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{guessable}: {err:?}");
        assert!(err.message().starts_with("session_id:"), "{err:?}");
        assert!(!err.message().contains(guessable), "echoes the id: {err:?}");
    }
    assert_eq!(worker.info().await.unwrap().sessions, 0, "none was opened");
    for unguessable in [
        session_id(),
        "6f1c2a7e-93b4-4d2c-8a51-0f9e3c7b2d14".to_string(),
    ] {
        let opened = worker
            .forward(forward(&unguessable, &prompt, 0))
            .await
            .unwrap();
        assert_eq!(opened.position, 4);
        worker.end_session(&unguessable).await.unwrap();
    }
}
