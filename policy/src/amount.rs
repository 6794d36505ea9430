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
    #[error("amount {0:?} is not a decimal number (write it like 0.25)")]
    NotDecimal(String),
    /// More fractional digits than the unit can represent.
    #[error("amount {0:?} has more than {1} decimal places")]
    TooPrecise(String, u8),
    /// Larger than 2^256 - 1 in the target unit.
    #[error("amount {0:?} is too large")]
    Overflow(String),
    /// A minus sign: limits, caps and payments are never negative.
    #[error("amount {0:?}: amount must not be negative")]
    Negative(String),
    /// A unit after the number that is neither `USD` nor the symbol of a registered asset
    /// (`1 FOO`, `0.5 ETH`): refused rather than dropped.
    #[error("amount {input:?}: unknown unit {unit:?}: amounts are in token units of the asset paid; write a plain number ({number}), ${number}, or {number} followed by a registered symbol ({known})")]
    UnknownUnit {
        /// The text as given.
        input: String,
        /// The unit written after the number.
        unit: String,
        /// The number without its unit.
        number: String,
        /// The units accepted, comma-separated.
        known: String,
    },
    /// A unit where only plain numbers are read (the policy document).
    #[error(
        "amount {0:?}: write a plain decimal in the token's units, such as \"0.25\" (no symbol)"
    )]
    UnitNotAllowed(String),
}

/// A human amount as typed: the value in 18-decimal units and the symbol, if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanAmount {
    /// Value in units of 10^-18 token.
    pub units: U256,
    /// Symbol written after the number (`USDC` in `0.25 USDC`), upper-cased.
    pub symbol: Option<String>,
}

/// The unit `$` stands for; accepted written out too (`0.25 USD`).
pub const USD: &str = "USD";

/// The units [`parse_human`] accepts after a number: `USD` and the symbols of the built-in asset
/// registry ([`crate::registry::DEFAULT_ASSETS`]), without duplicates.
#[must_use]
pub fn default_units() -> Vec<String> {
    let mut units = vec![USD.to_owned()];
    for (.., symbol) in crate::registry::DEFAULT_ASSETS {
        let s = symbol.to_uppercase();
        if !units.contains(&s) {
            units.push(s);
        }
    }
    units
}

/// Parses `0.25`, `0.25 USDC`, `$0.25`, `1_000` or `1000.5` into 18-decimal units. A unit after
/// the number must be `USD` or a symbol of the built-in registry ([`default_units`]); use
/// [`parse_human_in`] to check it against another registry (the enclave's own, with the assets
/// an admin added).
///
/// # Errors
/// [`AmountError`] for anything that is not a non-negative decimal number with a known unit.
pub fn parse_human(input: &str) -> Result<HumanAmount, AmountError> {
    parse_human_in(input, &default_units())
}

/// [`parse_human`] with the units of a given registry: `units` are the accepted symbols
/// (compared case-insensitively; `USD`, which `$` stands for, is always accepted). This is the
/// one parser of amounts people type: walletctl's flags and the enclave's requests use it, and the
/// policy document reads its plain numbers with [`parse_plain`].
///
/// # Errors
/// [`AmountError`]: not a decimal number, negative, too precise, too large, or a unit that is
/// not in `units` ([`AmountError::UnknownUnit`], never silently dropped).
pub fn parse_human_in<S: AsRef<str>>(input: &str, units: &[S]) -> Result<HumanAmount, AmountError> {
    let mut s = input.trim();
    let mut symbol = None;
    if s.starts_with('-') {
        return Err(AmountError::Negative(input.to_owned()));
    }
    if let Some(rest) = s.strip_prefix('$') {
        s = rest.trim_start();
        symbol = Some(USD.to_owned());
    }
    // `0.25 USDC`, or `0.25USDC` written without the space.
    let split = s.split_once(char::is_whitespace).or_else(|| {
        let at = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))?;
        (at > 0 && s[at..].starts_with(char::is_alphabetic)).then(|| s.split_at(at))
    });
    if let Some((num, sym)) = split {
        let sym = sym.trim();
        if sym.is_empty() || sym.contains(char::is_whitespace) {
            return Err(AmountError::NotDecimal(input.to_owned()));
        }
        let upper = sym.to_uppercase();
        if upper != USD && !units.iter().any(|u| u.as_ref().to_uppercase() == upper) {
            if num.starts_with('-') {
                return Err(AmountError::Negative(input.to_owned()));
            }
            let mut known: Vec<String> = vec![USD.to_owned()];
            for u in units {
                let u = u.as_ref().to_uppercase();
                if !known.contains(&u) {
                    known.push(u);
                }
            }
            return Err(AmountError::UnknownUnit {
                input: input.to_owned(),
                unit: sym.to_owned(),
                number: num.to_owned(),
                known: known.join(", "),
            });
        }
        symbol = Some(upper);
        s = num;
    }
    if s.starts_with('-') {
        return Err(AmountError::Negative(input.to_owned()));
    }
    let units = parse_decimal(s, UNIT_DECIMALS).map_err(|e| match e {
        AmountError::Empty if !input.trim().is_empty() => AmountError::NotDecimal(input.to_owned()),
        AmountError::NotDecimal(_) => AmountError::NotDecimal(input.to_owned()),
        other => other,
    })?;
    Ok(HumanAmount { units, symbol })
}

/// A plain amount as the policy document writes it (`"0.25"`, no `$` and no symbol), in
/// 18-decimal units: the same grammar as [`parse_human`] without the unit.
///
/// # Errors
/// [`AmountError`]: [`AmountError::UnitNotAllowed`] for `$0.25` or `0.25 USDC`,
/// [`AmountError::Negative`] for `-1`, and the number's own errors.
pub fn parse_plain(input: &str) -> Result<U256, AmountError> {
    let t = input.trim();
    if t.starts_with('-') {
        return Err(AmountError::Negative(input.to_owned()));
    }
    if t.starts_with('$') || t.contains(char::is_whitespace) {
        return Err(AmountError::UnitNotAllowed(input.to_owned()));
    }
    parse_decimal(t, UNIT_DECIMALS).map_err(|e| match e {
        AmountError::NotDecimal(_) => AmountError::NotDecimal(input.to_owned()),
        other => other,
    })
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

    /// A unit is checked, never dropped (`--cap "1 FOO"` was read as 1); a minus sign is
    /// "must not be negative" wherever it is (`-1`, `$-1`, `-1 USDC`).
    #[test]
    fn units_are_checked_and_negatives_named() {
        for (bad, unit) in [("1 FOO", "FOO"), ("0.5 ETH", "ETH"), ("$1 DAI", "DAI")] {
            let e = parse_human(bad).unwrap_err();
            assert!(
                matches!(&e, AmountError::UnknownUnit { unit: u, .. } if u == unit),
                "{bad}: {e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("unknown unit") && msg.contains("USDC"), "{msg}");
        }
        for neg in ["-1", " -0.5 ", "$-1", "-$1", "-1 USDC", "-1 FOO", "$ -2"] {
            let e = parse_human(neg).unwrap_err();
            assert_eq!(e, AmountError::Negative(neg.to_owned()), "{neg}");
            assert!(e.to_string().contains("amount must not be negative"), "{e}");
            assert!(parse_plain(neg).is_err(), "{neg}");
        }
        assert!(matches!(parse_plain("-1"), Err(AmountError::Negative(_))));
        // Every registry symbol and USD, in any letter case.
        assert_eq!(parse_human("1 usdt0").unwrap().symbol.as_deref(), Some("USDT0"));
        assert_eq!(parse_human("1 usd").unwrap().symbol.as_deref(), Some("USD"));
        assert!(default_units().iter().any(|u| u == "USDC"));
        // Another registry (the enclave's, with an asset an admin added).
        assert_eq!(parse_human_in("2 tusd", &["TUSD"]).unwrap().units, units("2"));
        assert!(matches!(
            parse_human_in("2 USDC", &["TUSD"]),
            Err(AmountError::UnknownUnit { .. })
        ));
        assert_eq!(parse_human_in("$2", &[] as &[&str]).unwrap().units, units("2"));
        // Without the space, as people type it: the same amount and unit, checked the same way.
        assert_eq!(parse_human("0.05USDC").unwrap(), parse_human("0.05 USDC").unwrap());
        assert!(matches!(parse_human("1FOO"), Err(AmountError::UnknownUnit { .. })));
        assert!(matches!(parse_human("-1FOO"), Err(AmountError::Negative(_))));
        assert!(parse_plain("0.25USDC").is_err());
        assert!(parse_human("1.5.2").is_err());
    }

    /// The policy document's amounts: the same numbers, no unit.
    #[test]
    fn plain_amounts() {
        assert_eq!(parse_plain(" 0.25 ").unwrap(), units("0.25"));
        assert_eq!(parse_plain("1_000").unwrap(), units("1000"));
        for unit in ["$0.25", "0.25 USDC", "1 FOO"] {
            let e = parse_plain(unit).unwrap_err();
            assert_eq!(e, AmountError::UnitNotAllowed(unit.to_owned()));
            assert!(e.to_string().contains("plain decimal"), "{e}");
        }
        assert!(matches!(parse_plain("1.2.3"), Err(AmountError::NotDecimal(_))));
        assert_eq!(parse_plain(""), Err(AmountError::Empty));
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
