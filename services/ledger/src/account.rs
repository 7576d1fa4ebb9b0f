//! Accounts of the journal. Holders (wallets, stakes, escrows) never go negative; `mint` is
//! where verified work's NEURO comes from (its balance is minus everything minted) and `burn`
//! where fees and slashes go, so total supply = minted − burned = what holders hold.

use std::fmt;

use neuroshard_common::Error;
use neuroshard_common::identity::is_node_id;

/// A wallet address: the 40-hex node id of its secp256k1 key (`neuroshard_common::identity`).
pub fn check_address(field: &str, address: &str) -> Result<(), Error> {
    if is_node_id(address) {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "{field}: {address:?} is not an address (40 lowercase hex digits, a node id)"
        )))
    }
}

/// A request id the gateway escrows under: printable, bounded.
pub fn check_request_id(id: &str) -> Result<(), Error> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "request_id: {:?} must be 1-128 characters of [A-Za-z0-9-_.:]",
            id.chars().take(140).collect::<String>()
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    Wallet(String),
    Stake(String),
    Escrow(String),
    Mint,
    Burn,
}

impl Account {
    /// Whether its balance must stay at or above zero (all but `mint`).
    pub fn is_holder(&self) -> bool {
        !matches!(self, Account::Mint | Account::Burn)
    }

    pub fn parse(text: &str) -> Result<Account, Error> {
        match text.split_once('/') {
            Some(("wallet", a)) => check_address("account", a).map(|()| Account::Wallet(a.into())),
            Some(("stake", a)) => check_address("account", a).map(|()| Account::Stake(a.into())),
            Some(("escrow", id)) => check_request_id(id).map(|()| Account::Escrow(id.into())),
            None if text == "mint" => Ok(Account::Mint),
            None if text == "burn" => Ok(Account::Burn),
            _ => Err(Error::invalid_argument(format!(
                "account: {text:?} is not wallet/<address>, stake/<address>, escrow/<id>, mint or burn"
            ))),
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Wallet(a) => write!(f, "wallet/{a}"),
            Account::Stake(a) => write!(f, "stake/{a}"),
            Account::Escrow(id) => write!(f, "escrow/{id}"),
            Account::Mint => f.write_str("mint"),
            Account::Burn => f.write_str("burn"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_round_trip_and_bad_names_are_refused() {
        let a = "ab".repeat(20);
        for account in [
            Account::Wallet(a.clone()),
            Account::Stake(a.clone()),
            Account::Escrow("req-1".into()),
            Account::Mint,
            Account::Burn,
        ] {
            assert_eq!(Account::parse(&account.to_string()).unwrap(), account);
        }
        for bad in [
            "wallet/AB",
            "wallet/",
            "stake/xyz",
            "escrow/",
            "mintx",
            "bank/1",
        ] {
            assert!(Account::parse(bad).is_err(), "{bad}");
        }
        assert!(check_request_id(&"x".repeat(129)).is_err());
        assert!(check_request_id("a b").is_err());
    }
}
