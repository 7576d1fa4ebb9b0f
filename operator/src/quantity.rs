//! Kubernetes quantities of bytes (`8Gi`, `500M`, `1073741824`), pure and exact: integers
//! with a binary or decimal suffix. Fractions and milli-units make no sense for bytes and
//! are refused with the reason.

const SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

/// The bytes `quantity` stands for.
pub fn bytes(quantity: &str) -> Result<u64, String> {
    let q = quantity.trim();
    let (digits, unit) = SUFFIXES
        .iter()
        .find_map(|(suffix, unit)| q.strip_suffix(suffix).map(|d| (d, *unit)))
        .unwrap_or((q, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{quantity}` is not a whole number of bytes with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T)"
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("`{quantity}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_plain_quantities() {
        assert_eq!(bytes("8Gi"), Ok(8 << 30));
        assert_eq!(bytes("500M"), Ok(500_000_000));
        assert_eq!(bytes("1024"), Ok(1024));
        assert_eq!(bytes(" 2Ki "), Ok(2048));
        for bad in ["", "Gi", "1.5Gi", "100m", "-1Gi", "8 Gi", "8GB"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
        assert!(bytes("99999999999Ei").unwrap_err().contains("too large"));
    }
}
