//! Churn with real processes: six shard workers (each layer held three times), four streamed
//! greedy generations, and during them one worker dies (kill -9) and a seventh joins. The
//! streams through the dead worker fail over and every stream ends with its undisturbed text;
//! no stream that did not pass through the dead worker fails over; and placement moves the
//! minimum the sticky-placement property test names: no surviving worker's span changes (the
//! dead worker's layers keep two live holders, so nothing needs repair), and the joiner is
//! placed without moving anyone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use neuroshard_local::{LocalSwarm, SwarmOptions};
use support::completions::{complete, live_spans, request, route, start_streams};

const KEY: &str = "sk-test-0123456789abcdef";
const TIMEOUT: Duration = Duration::from_secs(60);
const TOKENS: usize = 160;
const PROMPTS: [&str; 4] = ["the king", "fair lady", "speak thou", "noble lord"];

#[test]
fn a_death_and_a_join_during_streams_disturb_only_the_dead_nodes_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 41);
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.workers = 6;
    options.http_port = 0;
    options.api_key = KEY.into();
    // The killed worker stays down: the churn is one death and one join.
    options.restart = None;
    // Seven processes share two cores, and a joining worker measures its throughput at
    // start: a generous decode deadline keeps CPU contention from passing for a failure, so
    // a failover here can only come from the churn itself.
    options.hop_deadline_ms = 2_000;
    let mut swarm =
        LocalSwarm::start(&options, Duration::from_secs(180), |s| println!("{s}")).unwrap();
    let port = swarm.gateway_port;
    let expected: Vec<String> = PROMPTS
        .iter()
        .map(|p| complete(port, KEY, p, TOKENS))
        .collect();
    let before = live_spans(&support::detail_status(port, KEY));
    assert_eq!(before.len(), 6, "{before:?}");

    // Four streams; once each has produced its first event, pick the victim.
    let (streams, ids) = start_streams(port, KEY, &PROMPTS, TOKENS);
    let doc = support::detail_status(port, KEY);
    let routes: BTreeMap<&str, Vec<String>> = ids
        .iter()
        .map(|id| (id.as_str(), route(request(&doc, id))))
        .collect();
    // The victim carries the fewest of the streams (at least one), so others pass elsewhere.
    let mut carried: BTreeMap<&str, usize> = BTreeMap::new();
    for hops in routes.values() {
        for node in hops {
            *carried.entry(node.as_str()).or_default() += 1;
        }
    }
    let (victim, _) = carried.iter().min_by_key(|(_, n)| **n).unwrap();
    let victim = victim.to_string();
    let unaffected: Vec<&str> = routes
        .iter()
        .filter(|(_, hops)| !hops.contains(&victim))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !unaffected.is_empty(),
        "every stream passes {victim}: {routes:?}"
    );
    swarm.worker_mut(&victim).unwrap().process.kill();
    let joiner = swarm.add_worker().unwrap();

    for (handle, want) in streams.into_iter().zip(&expected) {
        assert_eq!(&handle.join().unwrap(), want, "a stream's text changed");
    }
    let doc = support::detail_status(port, KEY);
    for id in &unaffected {
        let r = request(&doc, id);
        assert_eq!(
            r["failovers"], 0,
            "a stream not on {victim} failed over: {r}"
        );
    }

    // The registry declares the victim dead and places the joiner; nobody else moves.
    let deadline = Instant::now() + TIMEOUT;
    let after = loop {
        let spans = live_spans(&support::detail_status(port, KEY));
        if !spans.contains_key(&victim) && spans.contains_key(&joiner) {
            break spans;
        }
        assert!(Instant::now() < deadline, "not settled: {spans:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for (node, span) in &before {
        if node != &victim {
            assert_eq!(
                after.get(node),
                Some(span),
                "{node} moved: {before:?} → {after:?}"
            );
        }
    }
    let layers: BTreeSet<u64> = after.values().flat_map(|(s, e)| *s..*e).collect();
    for layer in layers {
        let holders = after
            .values()
            .filter(|(s, e)| *s <= layer && layer < *e)
            .count();
        assert!(
            holders >= 2,
            "layer {layer} has {holders} live holders: {after:?}"
        );
    }
    swarm.stop();
}
