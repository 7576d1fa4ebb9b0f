//! NEURO amounts: a checked integer count of nano-NEURO (10⁻⁹). No floating point touches a
//! balance: arithmetic is checked, parsing and printing are decimal string work.

use std::fmt;

use neuroshard_common::Error;

/// Nano-NEURO in one NEURO.
pub const NANO_PER_NEURO: i64 = 1_000_000_000;

/// An amount of NEURO in nano units. Signed, because journal entries are (a debit is
/// negative); balances of holders are never negative (the journal refuses it, the database
/// checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn from_nano(nano: i64) -> Self {
        Amount(nano)
    }

    pub const fn nano(self) -> i64 {
        self.0
    }

    /// Whole NEURO (for configuration defaults and tests).
    pub const fn neuro(whole: i64) -> Self {
        Amount(whole * NANO_PER_NEURO)
    }

    /// An amount a request asks to move: positive, or refused naming `field`.
    pub fn positive(nano: i64, field: &str) -> Result<Self, Error> {
        if nano <= 0 {
            return Err(Error::invalid_argument(format!(
                "{field}: {nano} nano-NEURO; an amount must be positive"
            )));
        }
        Ok(Amount(nano))
    }

    pub fn checked_add(self, other: Amount) -> Result<Amount, Error> {
        self.0
            .checked_add(other.0)
            .map(Amount)
            .ok_or_else(|| Error::invalid_argument("amount overflow"))
    }

    pub fn checked_sub(self, other: Amount) -> Result<Amount, Error> {
        self.0
            .checked_sub(other.0)
            .map(Amount)
            .ok_or_else(|| Error::invalid_argument("amount overflow"))
    }

    pub fn checked_neg(self) -> Result<Amount, Error> {
        self.0
            .checked_neg()
            .map(Amount)
            .ok_or_else(|| Error::invalid_argument("amount overflow"))
    }

    /// `self × numerator / denominator`, rounded down, in 128-bit arithmetic (the product
    /// cannot overflow); refused when the result does not fit.
    pub fn mul_div_floor(self, numerator: u128, denominator: u128) -> Result<Amount, Error> {
        if denominator == 0 || self.0 < 0 {
            return Err(Error::invalid_argument("amount scaling: bad operands"));
        }
        let value = (self.0 as u128)
            .checked_mul(numerator)
            .ok_or_else(|| Error::invalid_argument("amount overflow"))?
            / denominator;
        i64::try_from(value)
            .map(Amount)
            .map_err(|_| Error::invalid_argument("amount overflow"))
    }

    /// As [`Amount::mul_div_floor`], rounded up (fees: a tiny transfer cannot dodge the burn).
    pub fn mul_div_ceil(self, numerator: u128, denominator: u128) -> Result<Amount, Error> {
        if denominator == 0 || self.0 < 0 {
            return Err(Error::invalid_argument("amount scaling: bad operands"));
        }
        let product = (self.0 as u128)
            .checked_mul(numerator)
            .ok_or_else(|| Error::invalid_argument("amount overflow"))?;
        let value = product.div_ceil(denominator);
        i64::try_from(value)
            .map(Amount)
            .map_err(|_| Error::invalid_argument("amount overflow"))
    }

    /// Parses a decimal NEURO amount (`12`, `0.5`, `1.000000001`): at most nine decimals,
    /// no sign, no exponent.
    pub fn parse_neuro(text: &str) -> Result<Amount, Error> {
        let bad = |why: &str| Error::invalid_argument(format!("amount {text:?}: {why}"));
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad("empty"));
        }
        if !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("write digits with an optional '.', e.g. 12.5"));
        }
        if fraction.len() > 9 {
            return Err(bad("at most nine decimals (1 nano-NEURO)"));
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("too large"))?
        };
        let fraction: i64 = if fraction.is_empty() {
            0
        } else {
            format!("{fraction:0<9}")
                .parse()
                .map_err(|_| bad("bad decimals"))?
        };
        whole
            .checked_mul(NANO_PER_NEURO)
            .and_then(|w| w.checked_add(fraction))
            .map(Amount)
            .ok_or_else(|| bad("too large"))
    }
}

impl fmt::Display for Amount {
    /// `12.5`, `-0.000000001`, `0`: exact, trailing zeros trimmed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let per = NANO_PER_NEURO as u64;
        let (whole, fraction) = (magnitude / per, magnitude % per);
        if fraction == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{fraction:09}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_decimal_neuro() {
        assert_eq!(Amount::parse_neuro("12").unwrap(), Amount::neuro(12));
        assert_eq!(
            Amount::parse_neuro("0.5").unwrap().nano(),
            NANO_PER_NEURO / 2
        );
        assert_eq!(Amount::parse_neuro(".000000001").unwrap().nano(), 1);
        assert_eq!(Amount::parse_neuro("1.5").unwrap().to_string(), "1.5");
        assert_eq!(Amount::from_nano(-1).to_string(), "-0.000000001");
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "1.0000000001",
            "99999999999999999999",
            "1,5",
        ] {
            assert!(Amount::parse_neuro(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        let max = Amount::from_nano(i64::MAX);
        assert!(max.checked_add(Amount::from_nano(1)).is_err());
        assert!(Amount::from_nano(i64::MIN).checked_neg().is_err());
        assert!(max.mul_div_floor(2, 1).is_err());
        assert_eq!(
            Amount::from_nano(101).mul_div_ceil(5, 100).unwrap().nano(),
            6
        );
        assert_eq!(
            Amount::from_nano(101).mul_div_floor(5, 100).unwrap().nano(),
            5
        );
        assert!(Amount::positive(0, "amount").is_err());
        assert!(Amount::positive(-5, "amount").is_err());
    }

    proptest! {
        #[test]
        fn display_round_trips(nano in 0i64..i64::MAX) {
            let a = Amount::from_nano(nano);
            prop_assert_eq!(Amount::parse_neuro(&a.to_string()).unwrap(), a);
        }
    }
}
