//! What a generation keeps so that a node replacing a failed one can rebuild the session: the
//! hidden states each hop after the first has consumed (the first hop's are the token ids,
//! kept by the generation itself), within two budgets: one per generation and one for the
//! whole gateway ([`ReplayMemory`]). Pure bookkeeping, no I/O.
//!
//! Past a budget a generation drops everything it kept and stops keeping: a replacement's
//! input is then recomputed when it is needed, by replaying the hops before it from the token
//! ids (see `generation`). Replay outputs on their way to the next replaying hop are held
//! until taken either way; they are one tensor at a time, so they are not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use neuroshard_common::Error;
use neuroshard_proto::common::v1::Tensor as WireTensor;

/// Bytes of hidden state every generation of this gateway keeps, together, against a limit.
#[derive(Debug)]
pub struct ReplayMemory {
    limit: u64,
    used: AtomicU64,
}

impl ReplayMemory {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` from what is left, if they fit.
    pub fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    pub fn give_back(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// Everything this hop consumed so far (while keeping).
    kept: Option<WireTensor>,
    /// A replay output waiting for this hop's own replay (while not keeping).
    pending: Option<WireTensor>,
}

/// The hidden-state histories of one generation's hops, slot `k` for hop `k` (slot 0 unused).
#[derive(Debug)]
pub struct HopHistories {
    memory: Arc<ReplayMemory>,
    budget: u64,
    slots: Vec<Slot>,
    /// Bytes taken from `memory` for the kept histories.
    held: u64,
    keeping: bool,
}

impl Drop for HopHistories {
    fn drop(&mut self) {
        self.memory.give_back(self.held);
    }
}

fn bytes_of(tensor: &WireTensor) -> u64 {
    tensor.data.len() as u64
}

impl HopHistories {
    /// Histories for `hops` hops, keeping at most `budget` bytes drawn from `memory`.
    pub fn new(memory: Arc<ReplayMemory>, budget: u64, hops: usize) -> Self {
        Self {
            memory,
            budget,
            slots: (0..hops).map(|_| Slot::default()).collect(),
            held: 0,
            keeping: true,
        }
    }

    /// Whether the histories are still kept (no budget was exceeded).
    pub fn keeping(&self) -> bool {
        self.keeping
    }

    /// Bytes kept now.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Takes `bytes` more from both budgets, or stops keeping (dropping everything kept).
    fn reserve(&mut self, bytes: u64) -> bool {
        if self.keeping
            && self.held.saturating_add(bytes) <= self.budget
            && self.memory.try_take(bytes)
        {
            self.held += bytes;
            return true;
        }
        self.stop_keeping();
        false
    }

    /// Drops every kept history and keeps none from now on.
    pub fn stop_keeping(&mut self) {
        if self.keeping {
            tracing::debug!(
                held = self.held,
                "replay budget reached; failovers will recompute from token ids"
            );
        }
        self.keeping = false;
        for slot in &mut self.slots {
            slot.kept = None;
        }
        self.memory.give_back(self.held);
        self.held = 0;
    }

    /// Hop `k` consumed `rows` (`[1, n, hidden]`) after what it had consumed before.
    pub fn append(&mut self, k: usize, rows: &WireTensor) -> Result<(), Error> {
        if !self.keeping || k == 0 || k >= self.slots.len() {
            return Ok(());
        }
        if !self.reserve(bytes_of(rows)) {
            return Ok(());
        }
        append_rows(&mut self.slots[k].kept, rows)
    }

    /// The whole input of hop `k`'s replay, just computed by the replay of the hop before it.
    pub fn set_replayed(&mut self, k: usize, tensor: WireTensor) {
        let Some(old) = self.slots.get_mut(k).and_then(|s| s.kept.take()) else {
            return self.hold_or_keep(k, tensor);
        };
        // What the slot kept is replaced, not added to.
        self.held = self.held.saturating_sub(bytes_of(&old));
        self.memory.give_back(bytes_of(&old));
        self.hold_or_keep(k, tensor);
    }

    fn hold_or_keep(&mut self, k: usize, tensor: WireTensor) {
        if k == 0 || k >= self.slots.len() {
            return;
        }
        if self.reserve(bytes_of(&tensor)) {
            self.slots[k].kept = Some(tensor);
        } else {
            self.slots[k].pending = Some(tensor);
        }
    }

    /// What hop `k` has consumed, for a replay; `None` when it must be recomputed. A pending
    /// replay output is handed over (it is needed once); a kept history stays.
    pub fn replay_input(&mut self, k: usize) -> Option<WireTensor> {
        let slot = self.slots.get_mut(k)?;
        slot.pending.take().or_else(|| slot.kept.clone())
    }

    /// Hop `k` became `1 + extra` hops (a chain replaced one node): the first keeps hop `k`'s
    /// history, the new inner boundaries start empty.
    pub fn split(&mut self, k: usize, extra: usize) {
        let at = (k + 1).min(self.slots.len());
        self.slots
            .splice(at..at, std::iter::repeat_with(Slot::default).take(extra));
    }
}

/// Appends the positions of `rows` (`[1, n, hidden]`) to `history` (`[1, m, hidden]`).
fn append_rows(history: &mut Option<WireTensor>, rows: &WireTensor) -> Result<(), Error> {
    match history {
        None => *history = Some(rows.clone()),
        Some(h) => {
            let same_width = h.shape.len() == 3
                && rows.shape.len() == 3
                && h.shape[2] == rows.shape[2]
                && h.dtype == rows.dtype;
            if !same_width {
                return Err(Error::internal(format!(
                    "hidden states changed shape mid-request: {:?} then {:?}",
                    h.shape, rows.shape
                )));
            }
            h.shape[1] += rows.shape[1];
            h.data.extend_from_slice(&rows.data);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use neuroshard_common::tensor::{Limits, decode_f32, encode_f32};

    use super::*;

    fn rows(n: usize, value: f32) -> WireTensor {
        encode_f32(&[1, n as i64, 2], &vec![value; n * 2])
    }

    #[test]
    fn history_rows_concatenate_along_positions() {
        let mut history = None;
        append_rows(
            &mut history,
            &encode_f32(&[1, 2, 3], &[1., 2., 3., 4., 5., 6.]),
        )
        .unwrap();
        append_rows(&mut history, &encode_f32(&[1, 1, 3], &[7., 8., 9.])).unwrap();
        let h = history.unwrap();
        assert_eq!(h.shape, [1, 3, 3]);
        let values = decode_f32(&h, "h", &Limits::default()).unwrap();
        assert_eq!(values, [1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let mut history = Some(h);
        let err = append_rows(&mut history, &encode_f32(&[1, 1, 2], &[1., 2.])).unwrap_err();
        assert!(err.message.contains("changed shape"), "{}", err.message);
    }

    #[test]
    fn histories_are_kept_within_the_budget_and_dropped_past_it() {
        let memory = Arc::new(ReplayMemory::new(1 << 20));
        // Each row of 2 f32 is 8 bytes; 40 bytes allow five rows in all.
        let mut h = HopHistories::new(memory.clone(), 40, 3);
        h.append(1, &rows(2, 1.0)).unwrap();
        h.append(2, &rows(2, 2.0)).unwrap();
        assert!(h.keeping());
        assert_eq!((h.held(), memory.used()), (32, 32));
        assert_eq!(h.replay_input(1).unwrap().shape, [1, 2, 2]);
        // The hop 0 history is the token ids, kept elsewhere.
        h.append(0, &rows(9, 0.0)).unwrap();
        assert_eq!(h.held(), 32);
        // Two more rows do not fit: everything goes, and nothing is kept from then on.
        h.append(1, &rows(2, 1.0)).unwrap();
        assert!(!h.keeping());
        assert_eq!((h.held(), memory.used()), (0, 0));
        assert!(h.replay_input(1).is_none() && h.replay_input(2).is_none());
        h.append(1, &rows(1, 1.0)).unwrap();
        assert!(h.replay_input(1).is_none());
    }

    #[test]
    fn the_gateway_budget_is_shared_and_given_back() {
        let memory = Arc::new(ReplayMemory::new(48));
        let mut a = HopHistories::new(memory.clone(), 1 << 20, 2);
        let mut b = HopHistories::new(memory.clone(), 1 << 20, 2);
        a.append(1, &rows(4, 1.0)).unwrap();
        assert_eq!(memory.used(), 32);
        // b's two rows would pass the gateway's 48 bytes: b stops keeping, a goes on.
        b.append(1, &rows(3, 1.0)).unwrap();
        assert!(!b.keeping() && a.keeping());
        assert_eq!(memory.used(), 32);
        drop(a);
        assert_eq!(memory.used(), 0);
        assert!(memory.try_take(48) && !memory.try_take(1));
        memory.give_back(48);
        assert!(!memory.try_take(u64::MAX), "no overflow");
    }

    #[test]
    fn replay_outputs_reach_the_next_hop_kept_or_not() {
        let memory = Arc::new(ReplayMemory::new(1 << 20));
        // Keeping: a new inner hop's history is the replay output, and it stays.
        let mut keeping = HopHistories::new(memory.clone(), 1 << 20, 2);
        keeping.append(1, &rows(3, 1.0)).unwrap();
        keeping.split(1, 1);
        keeping.set_replayed(2, rows(3, 5.0));
        assert_eq!(keeping.held(), 48);
        assert_eq!(keeping.replay_input(2).unwrap().shape, [1, 3, 2]);
        assert!(keeping.replay_input(2).is_some(), "kept, not handed over");
        keeping.set_replayed(2, rows(4, 6.0));
        assert_eq!(keeping.held(), 56, "replaced, not added to");
        drop(keeping);
        // Not keeping: the output is held once, for the replay that takes it.
        let mut spent = HopHistories::new(memory.clone(), 0, 3);
        spent.append(1, &rows(1, 1.0)).unwrap();
        assert!(!spent.keeping());
        spent.set_replayed(2, rows(3, 5.0));
        assert_eq!(memory.used(), 0);
        assert_eq!(spent.replay_input(2).unwrap().shape, [1, 3, 2]);
        assert!(spent.replay_input(2).is_none());
    }
}
