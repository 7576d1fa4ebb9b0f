//! `neuroshard wallet`: a secp256k1 key file is a wallet (its address is the key's node id);
//! balance and history read the ledger, and transfer / stake / unstake are operations signed
//! with the key (`neuroshard_neuro::sign_operation`), sent once, and answered with the
//! ledger's outcome or its refusal.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms};
use neuroshard_neuro::{Amount, sign_operation};
use neuroshard_proto::ledger::v1::ledger_client::LedgerClient;
use neuroshard_proto::ledger::v1::{
    GetAccountRequest, HistoryRequest, Outcome, Stake, Transfer, Unstake, operation,
};
use tonic::transport::Channel;

use super::TlsArgs;

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Create a wallet key (mode 0600) and print its address; never overwrites a key.
    New(KeyArgs),
    /// Print the wallet's address.
    Address(KeyArgs),
    /// Balance, stake, unlock time and reward multiplier of the wallet (or of --address).
    Balance {
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Another address to look at (default: the wallet's own).
        #[arg(long)]
        address: Option<String>,
    },
    /// Send NEURO; 5% of it is burned (the ledger's fee), the recipient gets the rest.
    Transfer {
        #[command(flatten)]
        ledger: LedgerArgs,
        #[arg(long)]
        to: String,
        /// NEURO, in decimal (e.g. 12.5; at most nine decimals).
        #[arg(long)]
        amount: String,
    },
    /// Lock NEURO as stake (raises rewards; locked for the ledger's stake period).
    Stake {
        #[command(flatten)]
        ledger: LedgerArgs,
        #[arg(long)]
        amount: String,
    },
    /// Return unlocked stake to the wallet.
    Unstake {
        #[command(flatten)]
        ledger: LedgerArgs,
        #[arg(long)]
        amount: String,
    },
    /// The wallet's transactions, newest first, a page at a time.
    History {
        #[command(flatten)]
        ledger: LedgerArgs,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Show transactions before this one (the `next` a previous page printed).
        #[arg(long, default_value_t = 0)]
        before: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// The wallet's key file (default: $NEUROSHARD_WALLET_KEY, else ~/.neuroshard/wallet.key).
    #[arg(long, default_value_os_t = default_key())]
    pub key: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The ledger's gRPC URL (default: $NEUROSHARD_LEDGER, else the local swarm's).
    #[arg(long, default_value_t = env_or("NEUROSHARD_LEDGER", "http://127.0.0.1:7700"))]
    pub ledger: String,
    /// The network operations are signed for (default: $NEUROSHARD_NETWORK, else the local
    /// swarm's).
    #[arg(long, default_value_t = env_or("NEUROSHARD_NETWORK", "neuroshard-local"))]
    pub network: String,
    #[command(flatten)]
    pub tls: TlsArgs,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn default_key() -> PathBuf {
    if let Some(path) = std::env::var_os("NEUROSHARD_WALLET_KEY") {
        return PathBuf::from(path);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".neuroshard")
        .join("wallet.key")
}

fn load(key: &KeyArgs) -> anyhow::Result<NodeKey> {
    if !key.key.exists() {
        bail!(
            "no wallet key at {} (create one with `neuroshard wallet new`, or pass --key)",
            key.key.display()
        );
    }
    Ok(NodeKey::load(&key.key)?)
}

fn amount(text: &str) -> anyhow::Result<i64> {
    let amount = Amount::parse_neuro(text).with_context(|| "--amount")?;
    if amount <= Amount::ZERO {
        bail!("--amount: must be more than 0");
    }
    Ok(amount.nano())
}

async fn connect(args: &LedgerArgs) -> anyhow::Result<LedgerClient<Channel>> {
    let channel = args
        .tls
        .files(&[&args.ledger])
        .connect(&args.ledger)
        .await
        .with_context(|| {
            format!(
                "no answer from a ledger at {} (is it running? --ledger or $NEUROSHARD_LEDGER sets its URL)",
                args.ledger
            )
        })?;
    Ok(LedgerClient::new(channel))
}

fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the ledger refused: {} ({:?})",
        status.message(),
        status.code()
    )
}

fn print_outcome(outcome: &Outcome) {
    println!("transaction {} ({})", outcome.transaction, outcome.kind);
    for e in &outcome.entries {
        println!(
            "  {:>22}  {}",
            Amount::from_nano(e.amount).to_string(),
            e.account
        );
    }
}

async fn submit(args: &LedgerArgs, kind: operation::Kind) -> anyhow::Result<()> {
    let key = load(&args.key)?;
    let envelope = sign_operation(
        &key,
        &args.network,
        NonceSource::new().next(),
        now_ms(),
        kind,
    )?;
    let outcome = connect(args)
        .await?
        .submit(envelope)
        .await
        .map_err(refused)?
        .into_inner();
    print_outcome(&outcome);
    Ok(())
}

pub fn run(command: WalletCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            WalletCommand::New(args) => {
                if let Some(dir) = args.key.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                if args.key.exists() {
                    bail!(
                        "{} already exists: a wallet key is never overwritten (its address is {})",
                        args.key.display(),
                        NodeKey::load(&args.key)
                            .map(|k| k.node_id().to_string())
                            .unwrap_or_else(|e| e.message)
                    );
                }
                let key = NodeKey::generate();
                key.save(&args.key)?;
                println!("{}", key.node_id());
                eprintln!(
                    "wallet key written to {} (mode 0600); keep it safe",
                    args.key.display()
                );
            }
            WalletCommand::Address(args) => println!("{}", load(&args)?.node_id()),
            WalletCommand::Balance { ledger, address } => {
                let address = match address {
                    Some(a) => a,
                    None => load(&ledger.key)?.node_id().to_string(),
                };
                let state = connect(&ledger)
                    .await?
                    .get_account(GetAccountRequest { address })
                    .await
                    .map_err(refused)?
                    .into_inner();
                println!("address     {}", state.address);
                println!("balance     {} NEURO", Amount::from_nano(state.balance));
                println!("staked      {} NEURO", Amount::from_nano(state.staked));
                if state.staked > 0 {
                    println!("unlocks at  unix ms {}", state.stake_unlock_unix_ms);
                }
                println!(
                    "multiplier  {}.{:06}",
                    state.stake_multiplier_ppm / 1_000_000,
                    state.stake_multiplier_ppm % 1_000_000
                );
            }
            WalletCommand::Transfer {
                ledger,
                to,
                amount: a,
            } => {
                if !neuroshard_common::identity::is_node_id(&to) {
                    bail!(
                        "--to: {to:?} is not a wallet address (40 lowercase hex digits, as `neuroshard wallet address` prints)"
                    );
                }
                let amount = amount(&a)?;
                submit(&ledger, operation::Kind::Transfer(Transfer { to, amount })).await?;
            }
            WalletCommand::Stake { ledger, amount: a } => {
                let amount = amount(&a)?;
                submit(&ledger, operation::Kind::Stake(Stake { amount })).await?;
            }
            WalletCommand::Unstake { ledger, amount: a } => {
                let amount = amount(&a)?;
                submit(&ledger, operation::Kind::Unstake(Unstake { amount })).await?;
            }
            WalletCommand::History {
                ledger,
                limit,
                before,
            } => {
                let address = load(&ledger.key)?.node_id().to_string();
                let page = connect(&ledger)
                    .await?
                    .history(HistoryRequest {
                        address,
                        before,
                        limit,
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                for item in &page.items {
                    let net: i64 = item.entries.iter().map(|e| e.amount).sum();
                    println!(
                        "{:>8}  {:<15} {:>22}  unix ms {}",
                        item.transaction,
                        item.kind,
                        Amount::from_nano(net).to_string(),
                        item.unix_ms
                    );
                }
                if page.next_before != 0 {
                    println!("next page: --before {}", page.next_before);
                }
            }
        }
        Ok(())
    })
}
