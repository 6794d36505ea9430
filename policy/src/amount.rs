//! Money as integers.
//!
//! Limits and caps are kept in *units*: token amounts scaled to 18 decimals (`1 USDC` =
//! `10^18` units), so a limit of `0.25` means a quarter token of any allowed asset, whatever its
//! decimals. Paid amounts are atomic units of their asset (`10^6` per USDC). Conversions are
//! exact and checked; there is no floating point in this crate.

use alloy_primitives::U256;

/// Decimals of the policy unit.
pub const UNIT_DECIMALS: u8 = 18;

/// Why a human amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    /// The text is empty once `$` and the symbol are removed.
    #[error("amount is empty")]
    Empty,
    /// A character other than digits and one decimal point.
    #[error("amount {0:?} is not a decimal number (write it like 0.25, 0.25 USDC or $0.25)")]
    NotDecimal(String),
    /// More fractional digits than the unit can represent.
    #[error("amount {0:?} has more than {1} decimal places")]
    TooPrecise(String, u8),
    /// Larger than 2^256 - 1 in the target unit.
    #[error("amount {0:?} is too large")]
    Overflow(String),
}

/// A human amount as typed: the value in 18-decimal units and the symbol, if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanAmount {
    /// Value in units of 10^-18 token.
    pub units: U256,
    /// Symbol written after the number (`USDC` in `0.25 USDC`), upper-cased.
    pub symbol: Option<String>,
}

/// Parses `0.25`, `0.25 USDC`, `$0.25`, `1_000` or `1000.5` into 18-decimal units.
///
/// # Errors
/// [`AmountError`] for anything that is not a non-negative decimal number.
pub fn parse_human(input: &str) -> Result<HumanAmount, AmountError> {
    let mut s = input.trim();
    let mut symbol = None;
    if let Some(rest) = s.strip_prefix('$') {
        s = rest.trim_start();
        symbol = Some("USD".to_owned());
    }
    if let Some((num, sym)) = s.split_once(char::is_whitespace) {
        let sym = sym.trim();
        if sym.is_empty() || !sym.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
            return Err(AmountError::NotDecimal(input.to_owned()));
        }
        symbol = Some(sym.to_ascii_uppercase());
        s = num;
    }
    let units = parse_decimal(s, UNIT_DECIMALS).map_err(|e| match e {
        AmountError::Empty if !input.trim().is_empty() => AmountError::NotDecimal(input.to_owned()),
        AmountError::NotDecimal(_) => AmountError::NotDecimal(input.to_owned()),
        other => other,
    })?;
    Ok(HumanAmount { units, symbol })
}

/// Parses a plain decimal number (`12.345`, `_` allowed between digits) into an integer with
/// `decimals` fractional digits.
///
/// # Errors
/// [`AmountError`] when the text is not a decimal number or does not fit.
pub fn parse_decimal(s: &str, decimals: u8) -> Result<U256, AmountError> {
    let cleaned: String = s.chars().filter(|c| *c != '_').collect();
    if cleaned.is_empty() {
        return Err(AmountError::Empty);
    }
    let (int, frac) = cleaned.split_once('.').unwrap_or((&cleaned, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(AmountError::NotDecimal(s.to_owned()));
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > usize::from(decimals) {
        return Err(AmountError::TooPrecise(s.to_owned(), decimals));
    }
    let overflow = || AmountError::Overflow(s.to_owned());
    let int_v = if int.is_empty() {
        U256::ZERO
    } else {
        U256::from_str_radix(int, 10).map_err(|_| overflow())?
    };
    let frac_v = if frac.is_empty() {
        U256::ZERO
    } else {
        U256::from_str_radix(frac, 10).map_err(|_| overflow())?
    };
    let scale = pow10(decimals).ok_or_else(overflow)?;
    #[allow(clippy::cast_possible_truncation)] // frac.len() <= decimals <= 255
    let frac_scale = pow10(decimals - frac.len() as u8).ok_or_else(overflow)?;
    int_v
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_v.checked_mul(frac_scale)?))
        .ok_or_else(overflow)
}

/// Formats an integer with `decimals` fractional digits, trimming trailing zeros (`0.25`).
#[must_use]
pub fn format_decimal(value: U256, decimals: u8) -> String {
    let digits = value.to_string();
    let d = usize::from(decimals);
    if d == 0 {
        return digits;
    }
    let padded = if digits.len() <= d {
        format!("{}{digits}", "0".repeat(d + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - d);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    }
}

/// Formats 18-decimal units for people.
#[must_use]
pub fn format_units(units: U256) -> String {
    format_decimal(units, UNIT_DECIMALS)
}

/// Converts an atomic amount of an asset with `decimals` into 18-decimal units, exactly.
/// `None` when `decimals > 18` or on overflow.
#[must_use]
pub fn atomic_to_units(atomic: U256, decimals: u8) -> Option<U256> {
    let shift = UNIT_DECIMALS.checked_sub(decimals)?;
    atomic.checked_mul(pow10(shift)?)
}

/// `10^n` as U256, `None` past 10^77.
#[must_use]
pub fn pow10(n: u8) -> Option<U256> {
    U256::from(10u8).checked_pow(U256::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(s: &str) -> U256 {
        parse_human(s).unwrap().units
    }

    #[test]
    fn parses_the_forms_people_type() {
        let quarter = U256::from(250_000_000_000_000_000u128);
        assert_eq!(units("0.25"), quarter);
        assert_eq!(units(".25"), quarter);
        assert_eq!(units("$0.25"), quarter);
        assert_eq!(units("$ 0.25"), quarter);
        assert_eq!(units(" 0.25 USDC "), quarter);
        assert_eq!(parse_human("0.25 usdc").unwrap().symbol.as_deref(), Some("USDC"));
        assert_eq!(parse_human("$1").unwrap().symbol.as_deref(), Some("USD"));
        assert_eq!(units("1_000"), U256::from(1000u64) * pow10(18).unwrap());
        assert_eq!(units("5."), U256::from(5u64) * pow10(18).unwrap());
        assert_eq!(units("0.000000000000000001"), U256::from(1u8));
        assert_eq!(units("0.2500000000000000000000"), quarter, "trailing zeros are not precision");
    }

    #[test]
    fn rejects_what_is_not_money() {
        for bad in [
            "",
            " ",
            "$",
            "-1",
            "1e3",
            "0x10",
            "1.2.3",
            "abc",
            "1,5",
            "NaN",
            "inf",
            "0.25 US DC",
            "+1",
        ] {
            assert!(parse_human(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(matches!(parse_human("0.0000000000000000001"), Err(AmountError::TooPrecise(..))));
        assert!(matches!(parse_human(&"9".repeat(80)), Err(AmountError::Overflow(_))));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["0", "0.25", "1", "1000.000001", "0.000000000000000001", "123456789.5"] {
            assert_eq!(format_units(units(s)), s);
        }
        assert_eq!(format_decimal(U256::from(10000u64), 6), "0.01");
        assert_eq!(format_decimal(U256::from(1u64), 6), "0.000001");
        assert_eq!(format_decimal(U256::from(7u64), 0), "7");
    }

    #[test]
    fn atomic_conversion_is_exact_and_checked() {
        assert_eq!(atomic_to_units(U256::from(250_000u64), 6), Some(units("0.25")));
        assert_eq!(atomic_to_units(U256::from(1u64), 18), Some(U256::from(1u64)));
        assert_eq!(atomic_to_units(U256::from(1u64), 19), None);
        assert_eq!(atomic_to_units(U256::MAX, 6), None);
    }
}
