//! EVM addresses as the x402 wire writes them.

use alloy_primitives::Address;

/// Parses a `0x`-prefixed 20-byte hex address, exactly as strictly as the official x402 code
/// reads one (viem `getAddress`/`isAddress`, used by `@x402/evm` 2.27.0 on `payTo`, `asset` and
/// the authorization's addresses):
///
/// * the prefix is `0x` with a lowercase `x` (viem's `^0x[a-fA-F0-9]{40}$`): `0X…` is refused,
///   because the official verifier throws on it, so a payment to it could never settle;
/// * then exactly 40 hex digits;
/// * all-lowercase and all-uppercase digits are accepted as they are; a mixed-case form must
///   carry a valid EIP-55 checksum (as viem's strict `isAddress`): a typo in a mixed-case
///   address is an error, not a different payee.
///
/// Callers that want to accept any spelling of a trusted input (the owner's policy document,
/// KYT lists) lower-case it first.
///
/// # Errors
/// A sentence naming what is wrong.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let hex = match s.strip_prefix("0x") {
        Some(hex) => hex,
        None if s.starts_with("0X") => {
            return Err(format!(
            "address {s:?} must start with a lowercase 0x (the official x402 verifier refuses 0X)"
        ))
        }
        None => return Err(format!("address {s:?} must start with 0x")),
    };
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("address {s:?} is not 40 hex digits"));
    }
    let has_lower = hex.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper {
        let with_prefix = format!("0x{hex}");
        Address::parse_checksummed(&with_prefix, None)
            .map_err(|_| format!("address {s:?} has a wrong EIP-55 checksum"))
    } else {
        let mut out = [0u8; 20];
        hex::decode_to_slice(hex, &mut out).map_err(|e| format!("address {s:?}: {e}"))?;
        Ok(Address::from(out))
    }
}

/// EIP-55 checksummed form.
#[must_use]
pub fn checksummed(a: &Address) -> String {
    a.to_checksum(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_single_case_and_valid_checksum() {
        let c = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
        let a = parse_address(c).unwrap();
        assert_eq!(parse_address(&c.to_lowercase()).unwrap(), a);
        assert_eq!(parse_address(&format!("0x{}", c[2..].to_uppercase())).unwrap(), a);
        assert_eq!(checksummed(&a), c);
    }

    #[test]
    fn rejects_bad_checksum_and_shapes() {
        assert!(parse_address("0x209693bc6afc0C5328bA36FaF03C514EF312287C").is_err());
        assert!(parse_address("209693Bc6afc0C5328bA36FaF03C514EF312287C").is_err());
        assert!(parse_address("0x209693Bc6afc0C5328bA36FaF03C514EF312287").is_err());
        assert!(parse_address("0xg09693bc6afc0c5328ba36faf03c514ef312287c").is_err());
        assert!(parse_address("0x209693Bc6afc0C5328bA36FaF03C514EF312287C0").is_err());
        assert!(parse_address(" 0x209693Bc6afc0C5328bA36FaF03C514EF312287C").is_err());
    }

    /// Issue 10, item 5: `0X` is what viem's `getAddress` throws on, so the official verifier
    /// never accepts a payment to it: refused in every case, with a sentence that says why.
    #[test]
    fn rejects_an_uppercase_0x_prefix_like_viem() {
        for s in [
            "0X209693Bc6afc0C5328bA36FaF03C514EF312287C",
            "0X209693bc6afc0c5328ba36faf03c514ef312287c",
            "0X209693BC6AFC0C5328BA36FAF03C514EF312287C",
        ] {
            let e = parse_address(s).unwrap_err();
            assert!(e.contains("lowercase 0x"), "{e}");
        }
    }
}
