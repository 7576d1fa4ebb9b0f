//! The ledger in memory: a [`State`] and its journal, with the invariants checked directly.
//! The seeded simulation drives it through crashes, duplicates and reordering; the store
//! steps through the same [`State::step`].

use std::collections::BTreeMap;

use neuroshard_common::Error;
use neuroshard_proto::ledger::v1::Outcome;

use crate::account::Account;
use crate::amount::Amount;
use crate::economics::Economics;
use crate::state::State;
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
    pub state: State,
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
        let id = self.journal.len() as u64 + 1;
        let (outcome, plan) = self.state.step(request, id, now_ms, &self.economics)?;
        if let Some(plan) = plan {
            self.journal.push(Transaction {
                id,
                key: request.key.clone(),
                entries: plan.entries,
            });
        }
        Ok(outcome)
    }

    pub fn balance(&self, account: &Account) -> Amount {
        self.state.balance(account)
    }

    /// (minted, burned, held by holders).
    pub fn supply(&self) -> (i64, i64, i128) {
        let minted = -self.balance(&Account::Mint).nano();
        let burned = self.balance(&Account::Burn).nano();
        let held = self
            .state
            .balances
            .iter()
            .filter(|(a, _)| a.is_holder())
            .map(|(_, b)| i128::from(b.nano()))
            .sum();
        (minted, burned, held)
    }

    /// The ledger's invariants: every transaction sums to zero, no holder is negative, every
    /// balance is the sum of its entries, supply = minted − burned, each key once, each open
    /// escrow holds what it escrowed and each settled one nothing.
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
        for (account, balance) in &self.state.balances {
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
        for (id, record) in &self.state.escrows {
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
