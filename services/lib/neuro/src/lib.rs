//! NEURO as every crate that handles it sees it (the ledger, wallets, the gateway, nodes):
//! [`amount`], the checked integer nano-NEURO with its decimal form, and [`operations`],
//! ledger operations signed the way the ledger verifies them. No transport.

pub mod amount;
pub mod operations;

pub use amount::{Amount, NANO_PER_NEURO};
pub use operations::{OPERATION, sign_operation};
