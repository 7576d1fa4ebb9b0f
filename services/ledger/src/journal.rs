//! The steps every store takes around a plan, pure: what a stored key means for a request
//! (the stored outcome for a retry, a refusal for another payload), the clock window and the
//! nonce rule for new operations, and the outcome a plan is answered and stored as.

use neuroshard_common::signing::check_fresh;
use neuroshard_common::{Error, ErrorKind};
use neuroshard_proto::ledger::v1::{Entry, Outcome};

use crate::ops::Plan;
use crate::verify::Request;

/// A key already applied: a retry with the same payload gets the stored outcome (marked
/// `replayed`); another payload under the key is refused.
pub fn replay(stored_hash: &[u8], stored: &Outcome, request: &Request) -> Result<Outcome, Error> {
    if stored_hash != request.payload_hash {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "{}: already applied with a different payload (transaction {})",
                request.key, stored.transaction
            ),
        ));
    }
    Ok(Outcome {
        replayed: true,
        ..stored.clone()
    })
}

/// What a new operation (its key not applied before) must also pass: signed within the
/// window of `now_ms`, and for a wallet operation a nonce above the signer's last (`last`).
pub fn check_new(request: &Request, last: Option<u64>, now_ms: i64) -> Result<(), Error> {
    let nonce = request.nonce.as_ref().map_or(0, |(_, n)| *n);
    check_fresh(
        last.filter(|_| request.nonce.is_some()),
        nonce,
        request.timestamp_ms,
        now_ms,
        request.window_ms,
    )
}

/// The outcome of applying `plan` for `request` as `transaction` at `unix_ms`.
pub fn outcome(transaction: u64, request: &Request, plan: &Plan, unix_ms: i64) -> Outcome {
    Outcome {
        transaction,
        kind: request.op.kind().to_string(),
        key: request.key.clone(),
        entries: plan
            .entries
            .iter()
            .map(|(account, amount)| Entry {
                account: account.to_string(),
                amount: amount.nano(),
            })
            .collect(),
        replayed: false,
        price_per_token: plan.price_per_token.nano(),
        escrowed: plan.escrowed.nano(),
        reward_uncapped: plan.reward_uncapped.nano(),
        note: plan.note.clone(),
        unix_ms,
    }
}
