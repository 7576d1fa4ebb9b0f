//! The state operations read and change, pure: balances, stake locks, escrows, daily
//! credits, the market, nonces and applied keys. [`State::step`] is the whole rule for one
//! request — a retry gets its stored outcome, a new one passes the clock and nonce checks,
//! is planned ([`crate::ops::plan`]) against this state and changes it. The in-memory ledger
//! holds all of it; the PostgreSQL store loads (and locks) the part a batch needs, steps
//! through the batch, and writes what changed in a few set-based statements.

use std::collections::BTreeMap;

use neuroshard_common::Error;
use neuroshard_proto::ledger::v1::Outcome;

use crate::account::Account;
use crate::amount::Amount;
use crate::economics::Economics;
use crate::journal::{check_new, outcome, replay};
use crate::ops::{EscrowRecord, Op, Plan, Snapshot, plan};
use crate::verify::Request;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub balances: BTreeMap<Account, Amount>,
    pub stake_unlocks: BTreeMap<String, i64>,
    pub escrows: BTreeMap<String, EscrowRecord>,
    /// Training credit per (node, UTC day).
    pub paid: BTreeMap<(String, i64), Amount>,
    pub utilisation_ppm: u64,
    /// Last accepted nonce per wallet signer.
    pub nonces: BTreeMap<String, u64>,
    /// Applied keys: the payload hash and the outcome answered.
    pub applied: BTreeMap<String, ([u8; 32], Outcome)>,
}

impl State {
    pub fn balance(&self, account: &Account) -> Amount {
        self.balances.get(account).copied().unwrap_or_default()
    }

    /// What `op`'s plan reads, at `now_ms`.
    pub fn snapshot(&self, op: &Op, now_ms: i64) -> Snapshot {
        let needs = op.needs();
        Snapshot {
            balances: needs
                .accounts
                .iter()
                .map(|a| (a.clone(), self.balance(a)))
                .collect(),
            stake_unlocks: needs
                .stake_locks
                .iter()
                .filter_map(|a| self.stake_unlocks.get(a).map(|u| (a.clone(), *u)))
                .collect(),
            escrow: needs.escrow.and_then(|id| self.escrows.get(&id).cloned()),
            paid_today: needs
                .node_day
                .and_then(|node| self.paid.get(&(node, Economics::day_of(now_ms))).copied())
                .unwrap_or_default(),
            utilisation_ppm: self.utilisation_ppm,
        }
    }

    /// Applies `request` as transaction `id` at `now_ms`: its outcome, and the plan when it
    /// was applied now (`None`: a retry, answered with the stored outcome). A refusal
    /// changes nothing.
    pub fn step(
        &mut self,
        request: &Request,
        id: u64,
        now_ms: i64,
        economics: &Economics,
    ) -> Result<(Outcome, Option<Plan>), Error> {
        if let Some((hash, stored)) = self.applied.get(&request.key) {
            return replay(hash, stored, request).map(|o| (o, None));
        }
        let last = request
            .nonce
            .as_ref()
            .and_then(|(signer, _)| self.nonces.get(signer).copied());
        check_new(request, last, now_ms)?;
        let plan = plan(
            &request.op,
            &self.snapshot(&request.op, now_ms),
            economics,
            now_ms,
        )?;
        self.apply(&plan)?;
        if let Some((signer, nonce)) = &request.nonce {
            self.nonces.insert(signer.clone(), *nonce);
        }
        let answer = outcome(id, request, &plan, now_ms);
        self.applied
            .insert(request.key.clone(), (request.payload_hash, answer.clone()));
        Ok((answer, Some(plan)))
    }

    /// Checks first, then changes: a plan that would take a holder below zero is refused
    /// whole (the database's CHECK does the same).
    fn apply(&mut self, plan: &Plan) -> Result<(), Error> {
        let mut next = Vec::with_capacity(plan.entries.len());
        for (account, amount) in &plan.entries {
            let after = self.balance(account).checked_add(*amount)?;
            if account.is_holder() && after < Amount::ZERO {
                return Err(Error::failed_precondition(format!(
                    "{account} would go below zero"
                )));
            }
            next.push((account.clone(), after));
        }
        let credit = match &plan.day_credit {
            Some((node, day, credit)) => {
                let key = (node.clone(), *day);
                let total = self
                    .paid
                    .get(&key)
                    .copied()
                    .unwrap_or_default()
                    .checked_add(*credit)?;
                Some((key, total))
            }
            None => None,
        };
        self.balances.extend(next);
        if let Some((key, total)) = credit {
            self.paid.insert(key, total);
        }
        if let Some((address, unlock)) = &plan.stake_unlock {
            self.stake_unlocks.insert(address.clone(), *unlock);
        }
        if let Some(record) = &plan.escrow_opened {
            self.escrows
                .insert(record.request_id.clone(), record.clone());
        }
        if let Some(id) = &plan.escrow_settled
            && let Some(record) = self.escrows.get_mut(id)
        {
            record.settled = true;
        }
        if let Some(u) = plan.utilisation_ppm {
            self.utilisation_ppm = u;
        }
        Ok(())
    }
}
