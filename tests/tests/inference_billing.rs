//! Inference paid through the ledger, end to end: the local swarm with its ledger (real
//! processes: PostgreSQL, registry, 4 shard workers, the gateway, the ledger). An unfunded
//! key gets 429 `insufficient_quota` before any compute; once the wallet holds NEURO (minted
//! by a training proof bound to an aggregator receipt, as nodes earn it), a streamed
//! completion is charged price × tokens, and the route's nodes are paid 15/70/15 of what is
//! left after the 5% burn; a client that leaves mid-stream pays only for what it was sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use neuroshard_common::identity::NodeKey;
use neuroshard_local::{LocalSwarm, SwarmOptions, http_request, open_request};
use neuroshard_proto::ledger::v1::GetAccountRequest;
use neuroshard_proto::ledger::v1::ledger_client::LedgerClient;
use serde_json::{Value, json};
use support::ledger::training_proof;

const KEY: &str = "billing-test-key-0123456789";
const NET: &str = "neuroshard-local";
const TIMEOUT: Duration = Duration::from_secs(60);

fn completion(port: u16, tokens: usize, stream: bool) -> neuroshard_local::HttpResponse {
    let mut body = json!({"model": "neurollm", "prompt": "the quick brown fox",
                          "max_tokens": tokens, "temperature": 0, "stream": stream});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    let body = body.to_string();
    let auth = format!("Bearer {KEY}");
    http_request(
        port,
        "POST",
        "/v1/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        &body,
        TIMEOUT,
    )
    .unwrap()
}

fn status(port: u16) -> Value {
    let auth = format!("Bearer {KEY}");
    let r = http_request(
        port,
        "GET",
        "/api/v1/status",
        &[("Authorization", &auth)],
        "",
        TIMEOUT,
    )
    .unwrap();
    serde_json::from_str(&r.body).unwrap()
}

/// The settled charge of `request_id`, once the ledger has acknowledged it.
fn settled(port: u16, request_id: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let doc = status(port);
        if let Some(charge) = doc["billing"]["recent"]
            .as_array()
            .and_then(|r| r.iter().find(|c| c["request_id"] == request_id))
        {
            return charge.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{request_id} never settled: {}",
            doc["billing"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn balance(ledger: &mut LedgerClient<tonic::transport::Channel>, address: &str) -> i64 {
    ledger
        .get_account(GetAccountRequest {
            address: address.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funded_keys_pay_the_route_and_unfunded_keys_are_refused_before_compute() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 21);
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.http_port = 0;
    options.api_key = KEY.into();
    options.plaintext = true;
    options.ledger = true;
    // No uptime epoch ends during the test (they are ~31 years long), so the workers pay no
    // uptime into the wallet whose balance it checks to the nano.
    options.uptime_epoch_ms = 1_000_000_000_000;
    let swarm = tokio::task::block_in_place(|| {
        LocalSwarm::start(&options, Duration::from_secs(120), |s| println!("{s}")).unwrap()
    });
    let port = swarm.gateway_port;
    let wallet = NodeKey::load(swarm.wallet_key.as_ref().unwrap()).unwrap();
    assert_eq!(swarm.wallet_address.as_deref(), Some(wallet.node_id()));
    let mut ledger = LedgerClient::connect(swarm.ledger_url.clone().unwrap())
        .await
        .unwrap();

    // Zero genesis: the wallet is empty, and the request is refused before any compute.
    let refused = tokio::task::block_in_place(|| completion(port, 16, false));
    assert_eq!(refused.status, 429, "{}", refused.body);
    let error: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(error["error"]["type"], "insufficient_quota");
    assert_eq!(error["error"]["code"], "insufficient_quota");
    let doc = tokio::task::block_in_place(|| status(port));
    assert_eq!(
        doc["requests"].as_array().unwrap().len(),
        0,
        "compute ran: {}",
        doc["requests"]
    );
    assert_eq!(doc["billing"]["refused_unfunded"], 1);

    // Verified work pays the wallet: a node's proof bound to the aggregator's receipt.
    let aggregator = NodeKey::load(&dir.path().join("state").join("aggregator.key")).unwrap();
    let node = NodeKey::generate();
    let proof = training_proof(NET, &aggregator, &node, 1, 512 * 1_000, wallet.node_id(), 1);
    ledger.submit(proof).await.unwrap();
    let funded = balance(&mut ledger, wallet.node_id()).await;
    assert_eq!(
        funded, 2_020_000_000,
        "1,000 batches × 4 layers × 0.0005 NEURO, and the data it fed (layers from 0): \
         2,000 samples of 256 tokens × 0.00001 NEURO"
    );

    // A streamed completion with usage: charged price × (prompt + completion tokens).
    let streamed = tokio::task::block_in_place(|| completion(port, 24, true));
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    let chunks: Vec<Value> = streamed
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let usage = chunks.last().unwrap()["usage"].clone();
    let id = chunks[0]["id"].as_str().unwrap().to_string();
    let cost = &usage["cost"];
    let tokens = usage["total_tokens"].as_u64().unwrap();
    assert_eq!(cost["tokens"].as_u64().unwrap(), tokens, "{usage}");
    let price = cost["price_per_token"].as_i64().unwrap();
    let charged = cost["charged"].as_i64().unwrap();
    assert_eq!(charged, price * tokens as i64);
    let charge = tokio::task::block_in_place(|| settled(port, &id));
    assert_eq!(charge["charged"].as_i64().unwrap(), charged, "{charge}");
    assert_eq!(
        balance(&mut ledger, wallet.node_id()).await,
        funded - charged
    );

    // The route: burn 5% (rounded up), then 15% Driver, 15% Validator, 70% over the nodes
    // that processed layers.
    let burn = (charged * 500 + 9_999) / 10_000;
    let rest = charged - burn;
    let (driver_share, validator_share) = (rest * 1_500 / 10_000, rest * 1_500 / 10_000);
    let processors: Vec<String> = charge["processors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let pool = rest - driver_share - validator_share;
    let mut expected = std::collections::BTreeMap::<String, i64>::new();
    *expected
        .entry(charge["driver"].as_str().unwrap().into())
        .or_default() += driver_share;
    *expected
        .entry(charge["validator"].as_str().unwrap().into())
        .or_default() += validator_share;
    let n = processors.len() as i64;
    for (i, p) in processors.iter().enumerate() {
        *expected.entry(p.clone()).or_default() += pool / n + i64::from((i as i64) < pool % n);
    }
    assert!(expected.len() >= 2, "a 2-stage route: {charge}");
    for (node, amount) in &expected {
        assert_eq!(
            balance(&mut ledger, node).await,
            *amount,
            "{node} in {charge}"
        );
    }
    let supply = support::ledger::audited_supply(&mut ledger).await;
    assert_eq!(supply.burned, burn);
    // The status document shows the ledger's supply and the key's wallet, as the dashboard
    // draws them.
    let billing = tokio::task::block_in_place(|| status(port))["billing"].clone();
    assert_eq!(
        billing["supply"]["minted"].as_i64(),
        Some(supply.minted),
        "{billing}"
    );
    assert_eq!(
        billing["supply"]["burned"].as_i64(),
        Some(burn),
        "{billing}"
    );
    assert_eq!(billing["wallets"][0]["address"], wallet.node_id());
    assert_eq!(
        billing["wallets"][0]["balance"].as_i64(),
        Some(funded - charged)
    );

    // A client that leaves after a few chunks pays for what it was sent, not the maximum.
    let before = balance(&mut ledger, wallet.node_id()).await;
    let body = json!({"model": "neurollm", "prompt": "the quick brown fox", "max_tokens": 200,
                      "temperature": 0, "stream": true})
    .to_string();
    let auth = format!("Bearer {KEY}");
    let (left_id, received) = tokio::task::block_in_place(|| {
        let socket = open_request(
            port,
            "POST",
            "/v1/completions",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            &body,
            TIMEOUT,
        )
        .unwrap();
        let mut reader = BufReader::new(socket);
        let (mut line, mut id, mut received) = (String::new(), String::new(), 0u64);
        while received < 3 {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0);
            if let Some(data) = line.trim().strip_prefix("data: ") {
                let chunk: Value = serde_json::from_str(data).unwrap();
                id = chunk["id"].as_str().unwrap().to_string();
                received += 1;
            }
        }
        (id, received)
    });
    let charge = tokio::task::block_in_place(|| settled(port, &left_id));
    let prompt_tokens = tokens - usage["completion_tokens"].as_u64().unwrap();
    let charged_tokens = charge["tokens"].as_u64().unwrap();
    assert!(
        charged_tokens >= prompt_tokens + received && charged_tokens < prompt_tokens + 200,
        "charged {charged_tokens} tokens after receiving {received} chunks: {charge}"
    );
    let price = charge["price_per_token"].as_i64().unwrap();
    assert_eq!(
        charge["charged"].as_i64().unwrap(),
        price * charged_tokens as i64
    );
    assert_eq!(
        balance(&mut ledger, wallet.node_id()).await,
        before - price * charged_tokens as i64
    );
}
