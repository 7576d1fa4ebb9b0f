//! The ledger in memory: the same steps as the PostgreSQL store ([`crate::journal`] around
//! [`crate::ops::plan`]) on maps, with the invariants checked directly. The seeded
//! simulation drives it through crashes, duplicates and reordering; it is also the
//! reference the store's behaviour is compared with.

use std::collections::BTreeMap;

use neuroshard_common::Error;
use neuroshard_proto::ledger::v1::Outcome;

use crate::account::Account;
use crate::amount::Amount;
use crate::economics::Economics;
use crate::journal::{check_new, outcome, replay};
use crate::ops::{EscrowRecord, Op, Plan, Snapshot, plan};
use crate::verify::Request;

/// One journal transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: u64,
    pub key: String,
    pub entries: Vec<(Account, Amount)>,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryLedger {
    pub economics: Economics,
    pub journal: Vec<Transaction>,
    pub balances: BTreeMap<Account, Amount>,
    pub stake_unlocks: BTreeMap<String, i64>,
    pub escrows: BTreeMap<String, EscrowRecord>,
    pub paid: BTreeMap<(String, i64), Amount>,
    pub utilisation_ppm: u64,
    /// Applied keys: the payload hash and the stored outcome.
    pub applied: BTreeMap<String, ([u8; 32], Outcome)>,
    pub nonces: BTreeMap<String, u64>,
}

impl MemoryLedger {
    pub fn new(economics: Economics) -> Self {
        Self {
            economics,
            ..Self::default()
        }
    }

    /// Applies `request` at `now_ms`, or refuses it and changes nothing.
    pub fn submit(&mut self, request: &Request, now_ms: i64) -> Result<Outcome, Error> {
        if let Some((hash, stored)) = self.applied.get(&request.key) {
            return replay(hash, stored, request);
        }
        let last = request
            .nonce
            .as_ref()
            .and_then(|(signer, _)| self.nonces.get(signer).copied());
        check_new(request, last, now_ms)?;
        let snapshot = self.snapshot(&request.op, now_ms);
        let plan = plan(&request.op, &snapshot, &self.economics, now_ms)?;
        let id = self.journal.len() as u64 + 1;
        let result = outcome(id, request, &plan, now_ms);
        self.apply(&plan)?;
        self.journal.push(Transaction {
            id,
            key: request.key.clone(),
            entries: plan.entries,
        });
        self.applied
            .insert(request.key.clone(), (request.payload_hash, result.clone()));
        if let Some((signer, nonce)) = &request.nonce {
            self.nonces.insert(signer.clone(), *nonce);
        }
        Ok(result)
    }

    fn snapshot(&self, op: &Op, now_ms: i64) -> Snapshot {
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
        self.balances.extend(next);
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
        if let Some((node, day, credit)) = &plan.day_credit {
            let paid = self.paid.entry((node.clone(), *day)).or_default();
            *paid = paid.checked_add(*credit)?;
        }
        if let Some(u) = plan.utilisation_ppm {
            self.utilisation_ppm = u;
        }
        Ok(())
    }

    pub fn balance(&self, account: &Account) -> Amount {
        self.balances.get(account).copied().unwrap_or_default()
    }

    /// (minted, burned, held by holders).
    pub fn supply(&self) -> (i64, i64, i128) {
        let minted = -self.balance(&Account::Mint).nano();
        let burned = self.balance(&Account::Burn).nano();
        let held = self
            .balances
            .iter()
            .filter(|(a, _)| a.is_holder())
            .map(|(_, b)| i128::from(b.nano()))
            .sum();
        (minted, burned, held)
    }

    /// The ledger's invariants: every transaction sums to zero, no holder is negative, every
    /// balance is the sum of its entries, supply = minted − burned, each key once.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut sums: BTreeMap<&Account, i128> = BTreeMap::new();
        let mut keys = std::collections::BTreeSet::new();
        for t in &self.journal {
            let total: i128 = t.entries.iter().map(|(_, a)| i128::from(a.nano())).sum();
            if total != 0 {
                return Err(format!("transaction {} sums to {total}", t.id));
            }
            if !keys.insert(&t.key) {
                return Err(format!("key {} applied twice", t.key));
            }
            for (account, amount) in &t.entries {
                *sums.entry(account).or_default() += i128::from(amount.nano());
            }
        }
        for (account, balance) in &self.balances {
            if account.is_holder() && *balance < Amount::ZERO {
                return Err(format!("{account} is negative: {balance}"));
            }
            let sum = sums.get(account).copied().unwrap_or(0);
            if sum != i128::from(balance.nano()) {
                return Err(format!(
                    "{account}: balance {balance} but entries sum to {sum}"
                ));
            }
        }
        let (minted, burned, held) = self.supply();
        if i128::from(minted) - i128::from(burned) != held {
            return Err(format!(
                "supply: minted {minted} - burned {burned} != held {held}"
            ));
        }
        for (id, record) in &self.escrows {
            let left = self.balance(&Account::Escrow(id.clone()));
            let expected = if record.settled {
                Amount::ZERO
            } else {
                record.amount
            };
            if left != expected {
                return Err(format!("escrow {id} holds {left}, expected {expected}"));
            }
        }
        Ok(())
    }
}
