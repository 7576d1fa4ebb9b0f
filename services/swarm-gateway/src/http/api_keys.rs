//! API keys: the `Authorization: Bearer <key>` value of a request, mapped to the account it is
//! charged to ([`ApiKeys::authenticate`]; the middleware in [`super::auth`] applies it to
//! `/v1/*`). Only SHA-256 digests of the keys are kept, and a presented key is compared against
//! every digest in constant time, so neither timing nor a memory dump gives a key away.

use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::ApiKey;

/// The account a request acts for, attached to the request as an extension once its key is
/// accepted (read by handlers and, later, the ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account(pub String);

/// The configured keys, as digests.
#[derive(Clone)]
pub struct ApiKeys {
    entries: Vec<([u8; 32], Account)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl ApiKeys {
    pub fn new(keys: &[ApiKey]) -> Self {
        Self {
            entries: keys
                .iter()
                .map(|k| (digest(&k.key), Account(k.account.clone())))
                .collect(),
        }
    }

    /// The account of `key`, looking at every entry whatever matches.
    pub fn account_of(&self, key: &str) -> Option<Account> {
        let presented = digest(key);
        let mut found = None;
        for (stored, account) in &self.entries {
            if constant_time_eq(stored, &presented) && found.is_none() {
                found = Some(account.clone());
            }
        }
        found
    }

    /// The account for an `Authorization` header value, or the 401 to answer.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Account, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::invalid_api_key(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ));
        };
        let Some(key) = bearer_token(value) else {
            return Err(ApiError::invalid_api_key(
                "The Authorization header must be `Bearer <key>`.",
            ));
        };
        self.account_of(key)
            .ok_or_else(|| ApiError::invalid_api_key("Incorrect API key provided."))
    }
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(&[
            ApiKey {
                key: "sk-alice-0123456789".into(),
                account: "alice".into(),
            },
            ApiKey {
                key: "sk-bob-9876543210xx".into(),
                account: "bob".into(),
            },
        ])
    }

    #[test]
    fn known_keys_map_to_their_accounts() {
        let k = keys();
        assert_eq!(
            k.authenticate(Some("Bearer sk-alice-0123456789")).unwrap(),
            Account("alice".into())
        );
        assert_eq!(
            k.authenticate(Some("bearer  sk-bob-9876543210xx "))
                .unwrap(),
            Account("bob".into())
        );
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_401_without_echo() {
        let k = keys();
        for header in [
            None,
            Some("sk-alice-0123456789"),
            Some("Basic c2stYWxpY2U="),
            Some("Bearer "),
            Some("Bearer sk-alice-0123456788"),
            Some("Bearer sk-alice-0123456789-and-more"),
        ] {
            let e = k.authenticate(header).unwrap_err();
            assert_eq!(e.status.as_u16(), 401, "{header:?}");
            assert_eq!(e.code, Some("invalid_api_key"));
            assert!(!e.message.contains("sk-alice"), "{}", e.message);
            assert!(!e.message.contains("c2st"), "{}", e.message);
        }
    }

    #[test]
    fn debug_shows_no_digest() {
        let shown = format!("{:?}", keys());
        assert!(shown.contains("count: 2"), "{shown}");
        assert!(!shown.contains("alice"), "{shown}");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        let a = digest("x");
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
