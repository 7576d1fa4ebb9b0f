//! The ledger's rules, pure: a checked operation and the state it reads ([`Snapshot`]) give
//! either a refusal (nothing changes) or a [`Plan`]: journal entries that sum to zero and the
//! bookkeeping beside them (stake locks, escrows, the daily cap, the market). The PostgreSQL
//! store and the in-memory model of the seeded simulation both apply plans made here, so the
//! rules are tested once and hold in both.

use std::collections::BTreeMap;

use neuroshard_common::role::Role;
use neuroshard_common::{Error, ErrorKind};

use crate::account::Account;
use crate::amount::Amount;
use crate::economics::Economics;

/// An operation whose signature and bindings (receipt, evidence, gateway key) are checked;
/// addresses are node ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Transfer {
        from: String,
        to: String,
        amount: Amount,
    },
    Stake {
        address: String,
        amount: Amount,
    },
    Unstake {
        address: String,
        amount: Amount,
    },
    /// Paid from the aggregator's receipt: its node, span, depth and tokens, checked
    /// against the node's registered capacity (tokens/s × 1000) over the time the round had
    /// been open.
    Training {
        node: String,
        payout: String,
        round: u64,
        span: (u32, u32),
        num_layers: u32,
        tokens: u64,
        capacity_milli: u64,
        elapsed_ms: u64,
    },
    /// Paid from the registry's attestation of the node's uptime in one epoch.
    Uptime {
        node: String,
        payout: String,
        epoch_start_ms: i64,
        uptime_ms: u64,
    },
    /// Aggregator-proven fraud by `node`, reported by `reporter`.
    Slash {
        node: String,
        reporter: String,
        kind: String,
    },
    Escrow {
        gateway: String,
        request_id: String,
        payer: String,
        max_tokens: u64,
        utilisation_ppm: u64,
    },
    /// The ledger's own refund of an escrow its gateway never settled (unsigned: it is
    /// applied by the ledger when the escrow is older than `escrow_ttl_ms`).
    Expire {
        request_id: String,
    },
    Settle {
        gateway: String,
        request_id: String,
        tokens: u64,
        driver: String,
        processors: Vec<String>,
        validator: String,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Transfer { .. } => "transfer",
            Op::Stake { .. } => "stake",
            Op::Unstake { .. } => "unstake",
            Op::Training { .. } => "training_proof",
            Op::Slash { .. } => "slash",
            Op::Uptime { .. } => "uptime_proof",
            Op::Escrow { .. } => "escrow",
            Op::Expire { .. } => "expire",
            Op::Settle { .. } => "settle",
        }
    }

    /// Holder accounts the operation may credit beyond those its plan reads (a store locks
    /// them with those).
    pub fn credits(&self) -> Vec<Account> {
        match self {
            Op::Transfer { to, .. } => vec![Account::Wallet(to.clone())],
            Op::Stake { address, .. } => vec![Account::Stake(address.clone())],
            Op::Unstake { address, .. } => vec![Account::Wallet(address.clone())],
            Op::Training { payout, .. } | Op::Uptime { payout, .. } => {
                vec![Account::Wallet(payout.clone())]
            }
            Op::Slash { reporter, .. } => vec![Account::Wallet(reporter.clone())],
            Op::Escrow { request_id, .. } => vec![Account::Escrow(request_id.clone())],
            // The payer's wallet, known only from the escrow record the plan reads.
            Op::Expire { .. } => Vec::new(),
            Op::Settle {
                driver,
                processors,
                validator,
                ..
            } => std::iter::once(driver)
                .chain(processors)
                .chain(std::iter::once(validator))
                .map(|n| Account::Wallet(n.clone()))
                .collect(),
        }
    }

    /// What the plan reads, so a store loads (and locks) exactly that.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs::default();
        match self {
            Op::Transfer { from, .. } | Op::Stake { address: from, .. } => {
                needs.accounts.push(Account::Wallet(from.clone()));
            }
            Op::Unstake { address, .. } => {
                needs.accounts.push(Account::Stake(address.clone()));
                needs.stake_locks.push(address.clone());
            }
            Op::Training { node, .. } | Op::Uptime { node, .. } => {
                needs.accounts.push(Account::Stake(node.clone()));
                needs.node_day = Some(node.clone());
            }
            Op::Slash { node, .. } => needs.accounts.push(Account::Stake(node.clone())),
            Op::Escrow { payer, .. } => {
                needs.accounts.push(Account::Wallet(payer.clone()));
                needs.market = true;
            }
            Op::Settle { request_id, .. } | Op::Expire { request_id } => {
                needs.accounts.push(Account::Escrow(request_id.clone()));
                needs.escrow = Some(request_id.clone());
            }
        }
        needs
    }
}

/// The state an operation's plan reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub accounts: Vec<Account>,
    pub stake_locks: Vec<String>,
    pub escrow: Option<String>,
    /// The node whose credit today counts against the daily cap.
    pub node_day: Option<String>,
    pub market: bool,
}

/// An open or settled escrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowRecord {
    pub request_id: String,
    pub gateway: String,
    pub payer: String,
    pub price_per_token: Amount,
    pub max_tokens: u64,
    pub amount: Amount,
    /// Settled, or refunded when it expired.
    pub settled: bool,
    pub opened_ms: i64,
}

/// What a plan is made from: the values [`Op::needs`] names (absent accounts hold zero).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub balances: BTreeMap<Account, Amount>,
    /// Unlock time of each stake (unix ms).
    pub stake_unlocks: BTreeMap<String, i64>,
    pub escrow: Option<EscrowRecord>,
    /// Credited to the node today.
    pub paid_today: Amount,
    pub utilisation_ppm: u64,
}

impl Snapshot {
    pub fn balance(&self, account: &Account) -> Amount {
        self.balances.get(account).copied().unwrap_or_default()
    }
}

/// What applying an operation changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One entry per account, none zero, summing to zero (may be empty: a proof over the
    /// daily cap is recorded and pays nothing).
    pub entries: Vec<(Account, Amount)>,
    pub stake_unlock: Option<(String, i64)>,
    pub escrow_opened: Option<EscrowRecord>,
    pub escrow_settled: Option<String>,
    /// Credit counted against (node, day)'s cap.
    pub day_credit: Option<(String, i64, Amount)>,
    pub utilisation_ppm: Option<u64>,
    pub price_per_token: Amount,
    pub escrowed: Amount,
    pub reward_uncapped: Amount,
    pub note: String,
}

fn refuse(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
}

/// Sums entries per account and drops zeros, so each account appears once.
fn merged(entries: Vec<(Account, Amount)>) -> Result<Vec<(Account, Amount)>, Error> {
    let mut by_account: BTreeMap<Account, Amount> = BTreeMap::new();
    for (account, amount) in entries {
        let slot = by_account.entry(account).or_default();
        *slot = slot.checked_add(amount)?;
    }
    Ok(by_account
        .into_iter()
        .filter(|(_, a)| *a != Amount::ZERO)
        .collect())
}

fn require_funds(held: Amount, needed: Amount, what: &str) -> Result<(), Error> {
    if held < needed {
        return Err(refuse(
            ErrorKind::FailedPrecondition,
            format!("insufficient balance: {what} holds {held} NEURO, {needed} NEURO is needed"),
        ));
    }
    Ok(())
}

/// Mints `rewards` (uncapped, capped per proof) to `payout` within `node`'s daily room, and
/// says in the note what the caps cut.
fn mint_reward(
    plan: &mut Plan,
    node: &str,
    payout: &str,
    (uncapped, per_proof): (Amount, Amount),
    state: &Snapshot,
    economics: &Economics,
    now_ms: i64,
) -> Result<Vec<(Account, Amount)>, Error> {
    let credited = per_proof.min(economics.day_room(state.paid_today));
    plan.reward_uncapped = uncapped;
    plan.day_credit = Some((node.to_string(), Economics::day_of(now_ms), credited));
    if credited < uncapped {
        plan.note = format!(
            "capped: {uncapped} NEURO earned, {credited} NEURO paid (per-proof cap {}, daily cap {})",
            Amount::from_nano(economics.cap_per_proof),
            Amount::from_nano(economics.cap_per_node_day)
        );
    }
    Ok(vec![
        (Account::Mint, credited.checked_neg()?),
        (Account::Wallet(payout.to_string()), credited),
    ])
}

/// The plan for `op` at `now_ms` against `state`, or why it is refused.
pub fn plan(op: &Op, state: &Snapshot, economics: &Economics, now_ms: i64) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    let entries = match op {
        Op::Transfer { from, to, amount } => {
            if from == to {
                return Err(Error::invalid_argument(
                    "transfer: to is the sender's own wallet",
                ));
            }
            let wallet = Account::Wallet(from.clone());
            require_funds(state.balance(&wallet), *amount, &format!("wallet {from}"))?;
            let fee = economics.fee(*amount)?;
            let received = amount.checked_sub(fee)?;
            if received <= Amount::ZERO {
                return Err(Error::invalid_argument(format!(
                    "transfer: {amount} NEURO does not cover its {fee} NEURO burn"
                )));
            }
            vec![
                (wallet, amount.checked_neg()?),
                (Account::Wallet(to.clone()), received),
                (Account::Burn, fee),
            ]
        }
        Op::Stake { address, amount } => {
            let wallet = Account::Wallet(address.clone());
            require_funds(
                state.balance(&wallet),
                *amount,
                &format!("wallet {address}"),
            )?;
            let unlock = now_ms
                .checked_add(economics.stake_lock_ms)
                .ok_or_else(|| Error::invalid_argument("stake lock overflows the clock"))?;
            plan.stake_unlock = Some((address.clone(), unlock));
            vec![
                (wallet, amount.checked_neg()?),
                (Account::Stake(address.clone()), *amount),
            ]
        }
        Op::Unstake { address, amount } => {
            let stake = Account::Stake(address.clone());
            let staked = state.balance(&stake);
            if staked == Amount::ZERO {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!("unstake: {address} has nothing staked"),
                ));
            }
            let unlock = state.stake_unlocks.get(address).copied().unwrap_or(0);
            if now_ms < unlock {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "unstake: the stake is locked until unix ms {unlock} ({} s from now)",
                        (unlock - now_ms + 999) / 1000
                    ),
                ));
            }
            require_funds(staked, *amount, &format!("stake {address}"))?;
            vec![
                (stake, amount.checked_neg()?),
                (Account::Wallet(address.clone()), *amount),
            ]
        }
        Op::Training {
            node,
            payout,
            span,
            num_layers,
            tokens,
            capacity_milli,
            elapsed_ms,
            ..
        } => {
            if span.0 >= span.1 || span.1 > *num_layers {
                return Err(Error::invalid_argument(format!(
                    "receipt: span [{}, {}) is not inside a {num_layers}-layer model",
                    span.0, span.1
                )));
            }
            if *tokens > economics.max_tokens_per_proof {
                return Err(Error::invalid_argument(format!(
                    "receipt: {tokens} tokens is more than one proof may claim ({})",
                    economics.max_tokens_per_proof
                )));
            }
            let plausible = economics.plausible_tokens(*capacity_milli, *elapsed_ms);
            if *tokens > plausible {
                return Err(Error::invalid_argument(format!(
                    "receipt: {tokens} tokens in {elapsed_ms} ms is implausible for a node of registered capacity {}.{:03} tokens/s (at most {plausible} at {}x)",
                    capacity_milli / 1000,
                    capacity_milli % 1000,
                    economics.plausibility_factor
                )));
            }
            let role = Role::for_span(span.0, span.1, *num_layers);
            let stake = state.balance(&Account::Stake(node.clone()));
            let rewards =
                economics.training_reward(*tokens, span.1 - span.0, role, stake, span.0 == 0)?;
            mint_reward(&mut plan, node, payout, rewards, state, economics, now_ms)?
        }
        Op::Uptime {
            node,
            payout,
            uptime_ms,
            ..
        } => {
            let stake = state.balance(&Account::Stake(node.clone()));
            let rewards = economics.uptime_reward(*uptime_ms, stake)?;
            mint_reward(&mut plan, node, payout, rewards, state, economics, now_ms)?
        }
        Op::Slash { node, reporter, .. } => {
            let stake = Account::Stake(node.clone());
            let staked = state.balance(&stake);
            let (to_reporter, burned) = economics.slash(staked)?;
            let taken = to_reporter.checked_add(burned)?;
            if taken == Amount::ZERO {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!("slash: {node} has no stake to slash"),
                ));
            }
            vec![
                (stake, taken.checked_neg()?),
                (Account::Wallet(reporter.clone()), to_reporter),
                (Account::Burn, burned),
            ]
        }
        Op::Escrow {
            gateway,
            request_id,
            payer,
            max_tokens,
            utilisation_ppm,
        } => {
            if *max_tokens == 0 {
                return Err(Error::invalid_argument(
                    "escrow: max_tokens must be at least 1",
                ));
            }
            let smoothed = economics.smooth_utilisation(state.utilisation_ppm, *utilisation_ppm);
            let price = economics.price_per_token(smoothed)?;
            let amount = price.mul_div_floor(u128::from(*max_tokens), 1)?;
            let wallet = Account::Wallet(payer.clone());
            let held = state.balance(&wallet);
            if held < amount {
                return Err(refuse(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "insufficient_quota: wallet {payer} holds {held} NEURO; this request may cost {amount} NEURO ({max_tokens} tokens at {price} NEURO)"
                    ),
                ));
            }
            plan.utilisation_ppm = Some(smoothed);
            plan.price_per_token = price;
            plan.escrowed = amount;
            plan.escrow_opened = Some(EscrowRecord {
                request_id: request_id.clone(),
                gateway: gateway.clone(),
                payer: payer.clone(),
                price_per_token: price,
                max_tokens: *max_tokens,
                amount,
                settled: false,
                opened_ms: now_ms,
            });
            vec![
                (wallet, amount.checked_neg()?),
                (Account::Escrow(request_id.clone()), amount),
            ]
        }
        Op::Settle {
            gateway,
            request_id,
            tokens,
            driver,
            processors,
            validator,
        } => {
            let record = state.escrow.as_ref().ok_or_else(|| {
                refuse(
                    ErrorKind::NotFound,
                    format!("settle: no escrow for request {request_id}"),
                )
            })?;
            if &record.gateway != gateway {
                return Err(refuse(
                    ErrorKind::PermissionDenied,
                    format!("settle: request {request_id} was escrowed by another gateway"),
                ));
            }
            if record.settled {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "settle: request {request_id} is already closed (settled, or refunded when its escrow expired)"
                    ),
                ));
            }
            if *tokens > record.max_tokens {
                return Err(Error::invalid_argument(format!(
                    "settle: {tokens} tokens is more than the {} escrowed",
                    record.max_tokens
                )));
            }
            let charge = record
                .price_per_token
                .mul_div_floor(u128::from(*tokens), 1)?;
            let refund = record.amount.checked_sub(charge)?;
            let split = economics.split(charge, processors.len())?;
            plan.price_per_token = record.price_per_token;
            plan.escrowed = record.amount;
            plan.escrow_settled = Some(request_id.clone());
            let mut entries = vec![
                (
                    Account::Escrow(request_id.clone()),
                    record.amount.checked_neg()?,
                ),
                (Account::Wallet(record.payer.clone()), refund),
                (Account::Burn, split.burn),
                (Account::Wallet(driver.clone()), split.driver),
                (Account::Wallet(validator.clone()), split.validator),
            ];
            entries.extend(
                processors
                    .iter()
                    .zip(&split.processors)
                    .map(|(node, share)| (Account::Wallet(node.clone()), *share)),
            );
            entries
        }
        Op::Expire { request_id } => {
            let record = state.escrow.as_ref().ok_or_else(|| {
                refuse(
                    ErrorKind::NotFound,
                    format!("expire: no escrow for request {request_id}"),
                )
            })?;
            if record.settled {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!("expire: request {request_id} is already closed"),
                ));
            }
            let due = record.opened_ms.saturating_add(economics.escrow_ttl_ms);
            if now_ms < due {
                return Err(refuse(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "expire: the escrow of request {request_id} is open until unix ms {due}"
                    ),
                ));
            }
            plan.escrowed = record.amount;
            plan.escrow_settled = Some(request_id.clone());
            plan.note = "refunded: the gateway never settled it".into();
            vec![
                (
                    Account::Escrow(request_id.clone()),
                    record.amount.checked_neg()?,
                ),
                (Account::Wallet(record.payer.clone()), record.amount),
            ]
        }
    };
    plan.entries = merged(entries)?;
    let total = plan
        .entries
        .iter()
        .try_fold(Amount::ZERO, |sum, (_, a)| sum.checked_add(*a))?;
    if total != Amount::ZERO {
        return Err(Error::internal(format!(
            "{}: entries sum to {total}, not zero",
            op.kind()
        )));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(c: char) -> String {
        c.to_string().repeat(40)
    }

    fn with(balances: &[(Account, i64)]) -> Snapshot {
        Snapshot {
            balances: balances
                .iter()
                .map(|(a, n)| (a.clone(), Amount::from_nano(*n)))
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn transfer_burns_five_percent_and_needs_funds() {
        let e = Economics::default();
        let op = Op::Transfer {
            from: addr('a'),
            to: addr('b'),
            amount: Amount::neuro(10),
        };
        let p = plan(
            &op,
            &with(&[(Account::Wallet(addr('a')), 10_000_000_000)]),
            &e,
            0,
        )
        .unwrap();
        assert!(
            p.entries
                .contains(&(Account::Burn, Amount::from_nano(500_000_000)))
        );
        assert!(
            p.entries
                .contains(&(Account::Wallet(addr('b')), Amount::from_nano(9_500_000_000)))
        );
        let short = plan(&op, &with(&[(Account::Wallet(addr('a')), 1)]), &e, 0).unwrap_err();
        assert_eq!(short.kind, ErrorKind::FailedPrecondition);
        assert!(short.message.contains("insufficient balance"));
        let to_self = Op::Transfer {
            from: addr('a'),
            to: addr('a'),
            amount: Amount::neuro(1),
        };
        assert!(plan(&to_self, &Snapshot::default(), &e, 0).is_err());
    }

    #[test]
    fn stakes_lock_and_unstaking_early_names_the_unlock_time() {
        let e = Economics::default();
        let a = addr('a');
        let p = plan(
            &Op::Stake {
                address: a.clone(),
                amount: Amount::neuro(5),
            },
            &with(&[(Account::Wallet(a.clone()), 5_000_000_000)]),
            &e,
            1_000,
        )
        .unwrap();
        assert_eq!(p.stake_unlock, Some((a.clone(), 1_000 + e.stake_lock_ms)));
        let mut state = with(&[(Account::Stake(a.clone()), 5_000_000_000)]);
        state
            .stake_unlocks
            .insert(a.clone(), 1_000 + e.stake_lock_ms);
        let unstake = Op::Unstake {
            address: a.clone(),
            amount: Amount::neuro(5),
        };
        let early = plan(&unstake, &state, &e, 2_000).unwrap_err();
        assert!(
            early.message.contains("locked until unix ms"),
            "{}",
            early.message
        );
        plan(&unstake, &state, &e, 1_000 + e.stake_lock_ms).unwrap();
    }

    #[test]
    fn training_reward_is_minted_within_the_daily_cap() {
        let e = Economics::default();
        let op = Op::Training {
            node: addr('a'),
            payout: addr('b'),
            round: 3,
            span: (0, 2),
            num_layers: 4,
            tokens: 512 * 100,
            capacity_milli: 1_000_000,
            elapsed_ms: 60_000,
        };
        let p = plan(&op, &Snapshot::default(), &e, 0).unwrap();
        // 100 batches × 2 layers × 0.0005, plus the data it fed (200 samples × 0.00001),
        // Driver 1.0.
        assert_eq!(
            p.entries,
            vec![
                (Account::Wallet(addr('b')), Amount::from_nano(102_000_000)),
                (Account::Mint, Amount::from_nano(-102_000_000)),
            ]
        );
        let full = Snapshot {
            paid_today: Amount::from_nano(e.cap_per_node_day),
            ..Snapshot::default()
        };
        let p = plan(&op, &full, &e, 0).unwrap();
        assert!(p.entries.is_empty());
        assert!(p.note.contains("capped"));
        let outside = Op::Training {
            node: addr('a'),
            payout: addr('b'),
            round: 3,
            span: (3, 5),
            num_layers: 4,
            tokens: 512,
            capacity_milli: 1_000_000,
            elapsed_ms: 60_000,
        };
        assert!(plan(&outside, &Snapshot::default(), &e, 0).is_err());
    }

    #[test]
    fn training_tokens_beyond_the_registered_capacity_are_refused() {
        let e = Economics::default();
        let proof = |tokens: u64, capacity_milli: u64| Op::Training {
            node: addr('a'),
            payout: addr('a'),
            round: 1,
            span: (1, 2),
            num_layers: 4,
            tokens,
            capacity_milli,
            elapsed_ms: 10_000,
        };
        // 100 tokens/s for 10 s, ×32: 32,000 tokens at most.
        plan(&proof(32_000, 100_000), &Snapshot::default(), &e, 0).unwrap();
        let inflated = plan(&proof(32_001, 100_000), &Snapshot::default(), &e, 0).unwrap_err();
        assert_eq!(inflated.kind, ErrorKind::InvalidArgument);
        assert!(
            inflated.message.contains("implausible"),
            "{}",
            inflated.message
        );
        // A node with no registered capacity cannot be paid for tokens.
        assert!(plan(&proof(1, 0), &Snapshot::default(), &e, 0).is_err());
    }

    #[test]
    fn uptime_is_paid_per_minute_within_the_daily_cap() {
        let e = Economics::default();
        let op = Op::Uptime {
            node: addr('a'),
            payout: addr('b'),
            epoch_start_ms: 0,
            uptime_ms: 30 * 60_000 + 59_999,
        };
        let p = plan(&op, &Snapshot::default(), &e, 0).unwrap();
        assert!(
            p.entries
                .contains(&(Account::Wallet(addr('b')), Amount::from_nano(3_099_998)))
        );
        assert_eq!(
            p.day_credit,
            Some((addr('a'), 0, Amount::from_nano(3_099_998)))
        );
        let full = Snapshot {
            paid_today: Amount::from_nano(e.cap_per_node_day),
            ..Snapshot::default()
        };
        assert!(plan(&op, &full, &e, 0).unwrap().entries.is_empty());
    }

    #[test]
    fn an_unsettled_escrow_is_refunded_after_its_ttl_only() {
        let e = Economics::default();
        let record = EscrowRecord {
            request_id: "r1".into(),
            gateway: addr('g'),
            payer: addr('p'),
            price_per_token: Amount::from_nano(1_000),
            max_tokens: 10,
            amount: Amount::from_nano(10_000),
            settled: false,
            opened_ms: 1_000,
        };
        let expire = Op::Expire {
            request_id: "r1".into(),
        };
        let state = Snapshot {
            escrow: Some(record.clone()),
            ..Snapshot::default()
        };
        let early = plan(&expire, &state, &e, 1_000 + e.escrow_ttl_ms - 1).unwrap_err();
        assert!(early.message.contains("open until"), "{}", early.message);
        let p = plan(&expire, &state, &e, 1_000 + e.escrow_ttl_ms).unwrap();
        assert!(
            p.entries
                .contains(&(Account::Wallet(addr('p')), Amount::from_nano(10_000)))
        );
        assert_eq!(p.escrow_settled.as_deref(), Some("r1"));
        let closed = Snapshot {
            escrow: Some(EscrowRecord {
                settled: true,
                ..record
            }),
            ..Snapshot::default()
        };
        assert!(plan(&expire, &closed, &e, i64::MAX).is_err());
        assert!(plan(&expire, &Snapshot::default(), &e, i64::MAX).is_err());
    }

    #[test]
    fn escrow_and_settle_charge_the_tokens_and_split_the_rest() {
        let e = Economics::default();
        let (payer, gw) = (addr('p'), addr('g'));
        let escrow = Op::Escrow {
            gateway: gw.clone(),
            request_id: "r1".into(),
            payer: payer.clone(),
            max_tokens: 100,
            utilisation_ppm: 0,
        };
        let short = plan(&escrow, &Snapshot::default(), &e, 0).unwrap_err();
        assert_eq!(short.kind, ErrorKind::ResourceExhausted);
        assert!(short.message.starts_with("insufficient_quota"));
        let p = plan(
            &escrow,
            &with(&[(Account::Wallet(payer.clone()), 1_000_000)]),
            &e,
            0,
        )
        .unwrap();
        assert_eq!(p.escrowed, Amount::from_nano(100_000));
        let record = p.escrow_opened.unwrap();
        let settle_with = |gateway: &str, tokens: u64| Op::Settle {
            gateway: gateway.to_string(),
            request_id: "r1".into(),
            tokens,
            driver: addr('d'),
            processors: vec![addr('w'), addr('d')],
            validator: addr('v'),
        };
        let settle = settle_with(&gw, 40);
        let state = Snapshot {
            escrow: Some(record.clone()),
            ..Snapshot::default()
        };
        let p = plan(&settle, &state, &e, 0).unwrap();
        let get = |a: Account| {
            p.entries
                .iter()
                .find(|(x, _)| *x == a)
                .map(|(_, n)| n.nano())
        };
        // 40 tokens × 1000 nano = 40,000: 2,000 burned, 38,000 split 15/70/15.
        assert_eq!(get(Account::Wallet(payer)), Some(60_000));
        assert_eq!(get(Account::Burn), Some(2_000));
        assert_eq!(get(Account::Wallet(addr('v'))), Some(5_700));
        assert_eq!(get(Account::Wallet(addr('w'))), Some(13_300));
        // The Driver also processed a segment: one entry with both shares.
        assert_eq!(get(Account::Wallet(addr('d'))), Some(5_700 + 13_300));
        assert!(plan(&settle_with(&gw, 101), &state, &e, 0).is_err());
        let other_gateway = settle_with(&addr('x'), 40);
        assert_eq!(
            plan(&other_gateway, &state, &e, 0).unwrap_err().kind,
            ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn slash_takes_part_of_the_stake() {
        let e = Economics::default();
        let op = Op::Slash {
            node: addr('a'),
            reporter: addr('r'),
            kind: "commitment".into(),
        };
        assert!(plan(&op, &Snapshot::default(), &e, 0).is_err());
        let p = plan(&op, &with(&[(Account::Stake(addr('a')), 100)]), &e, 0).unwrap();
        assert!(
            p.entries
                .contains(&(Account::Stake(addr('a')), Amount::from_nano(-50)))
        );
        assert!(p.entries.contains(&(Account::Burn, Amount::from_nano(25))));
        assert!(
            p.entries
                .contains(&(Account::Wallet(addr('r')), Amount::from_nano(25)))
        );
    }
}
