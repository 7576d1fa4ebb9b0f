//! Following the aggregators' published global weights: when the weights the aggregators'
//! open round starts from are not the ones this node serves, fetch its span's part, keep it
//! as the span's source (θ_start of the next round; what a reload after a reassignment
//! uses), and swap the served span for one loaded from it. Answers change only here, at
//! round boundaries; requests in flight finish on the span they started on.

use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::tensor::decode_f32;
use neuroshard_common::{Error, Result};
use neuroshard_worker_client::aggregator::Aggregators;

use crate::node::{GlobalWeights, LoadPlan, load_span_at};
use crate::state::{Loaded, WorkerState};

/// Brings the served span to the aggregators' latest weights, if it is not there; returns
/// the round it serves afterwards (None: nothing loaded).
pub async fn catch_up(
    state: &Arc<WorkerState>,
    plan: &LoadPlan,
    aggregators: &Aggregators,
) -> Result<Option<u64>> {
    let round = aggregators.round().await?;
    let Some(loaded) = state.loaded() else {
        return Ok(None);
    };
    let wanted = round.weights_round;
    if loaded.weights_round == wanted {
        return Ok(Some(wanted));
    }
    let span = (loaded.spec.start as u32, loaded.spec.end as u32);
    let fetched = aggregators.fetch(wanted, span, state.limits).await?;
    let mut tensors = std::collections::BTreeMap::new();
    for (name, wire) in &fetched {
        tensors.insert(name.clone(), decode_f32(wire, name, &state.limits)?);
    }
    plan.set_global(GlobalWeights {
        round: wanted,
        span,
        architecture_version: loaded.architecture.version,
        tensors,
    });
    let (shard, weights_round) = {
        let (arch, plan) = (loaded.architecture.clone(), plan.clone());
        tokio::task::spawn_blocking(move || load_span_at(&arch, span.0, span.1, &plan))
            .await
            .map_err(|e| Error::internal(format!("loading task failed: {e}")))??
    };
    if weights_round != wanted {
        return Err(Error::internal(format!(
            "the fetched weights of round {wanted} do not fit the span [{}, {})",
            span.0, span.1
        )));
    }
    // The assignment may have moved the span meanwhile; the next pass fetches for the new one.
    let now = state.loaded();
    if now.as_ref().is_some_and(|n| Arc::ptr_eq(n, &loaded)) {
        state.set_loaded(Some(Loaded::start(
            shard,
            state.new_sessions(),
            loaded.assignment_version(),
            loaded.architecture.clone(),
            weights_round,
            state.compute,
        )?));
        tracing::info!(
            round = wanted,
            start = span.0,
            end = span.1,
            "serving the global weights of a new round"
        );
    }
    Ok(Some(wanted))
}

/// Runs [`catch_up`] every `poll` until the task is dropped.
pub async fn follow(
    state: Arc<WorkerState>,
    plan: LoadPlan,
    aggregators: Arc<Aggregators>,
    poll: Duration,
) {
    loop {
        if let Err(e) = catch_up(&state, &plan, &aggregators).await {
            tracing::debug!(error = %e, "following the global weights");
        }
        tokio::time::sleep(poll).await;
    }
}
