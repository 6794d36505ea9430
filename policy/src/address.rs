//! EVM addresses as the x402 wire writes them.

use alloy_primitives::Address;

/// Parses a `0x`-prefixed 20-byte hex address.
///
/// All-lowercase and all-uppercase forms are accepted as is. A mixed-case form must carry a valid
/// EIP-55 checksum, as the official clients require (`getAddress`): a typo in a mixed-case
/// address is an error, not a different payee.
///
/// # Errors
/// A sentence naming what is wrong.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| format!("address {s:?} must start with 0x"))?;
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
    }
}
