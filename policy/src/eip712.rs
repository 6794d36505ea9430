//! EIP-712 typed data of EIP-3009 `TransferWithAuthorization`, the message x402 `exact` signs.

use alloy_primitives::{keccak256, Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};

alloy_sol_types::sol! {
    /// EIP-3009 `TransferWithAuthorization`, field for field.
    #[derive(Debug, PartialEq, Eq)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The authorization values a wallet fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Payer (the wallet's address).
    pub from: Address,
    /// Payee (`payTo`).
    pub to: Address,
    /// Atomic units of the token.
    pub value: U256,
    /// Unix seconds after which it is valid.
    pub valid_after: u64,
    /// Unix seconds before which it is valid.
    pub valid_before: u64,
    /// 32 random bytes.
    pub nonce: [u8; 32],
}

impl Authorization {
    fn as_sol(&self) -> TransferWithAuthorization {
        TransferWithAuthorization {
            from: self.from,
            to: self.to,
            value: self.value,
            validAfter: U256::from(self.valid_after),
            validBefore: U256::from(self.valid_before),
            nonce: B256::from(self.nonce),
        }
    }

    /// `hashStruct(message)`.
    #[must_use]
    pub fn struct_hash(&self) -> B256 {
        self.as_sol().eip712_hash_struct()
    }

    /// The digest to sign: `keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(message))`.
    #[must_use]
    pub fn signing_hash(&self, domain_separator: &B256) -> B256 {
        let mut buf = [0u8; 66];
        buf[0] = 0x19;
        buf[1] = 0x01;
        buf[2..34].copy_from_slice(domain_separator.as_slice());
        buf[34..66].copy_from_slice(self.struct_hash().as_slice());
        keccak256(buf)
    }
}

/// EIP-712 domain separator for `{name, version, chainId, verifyingContract}`.
#[must_use]
pub fn domain_separator(
    name: &str,
    version: &str,
    chain_id: u64,
    verifying_contract: Address,
) -> B256 {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain_id)),
        Some(verifying_contract),
        None,
    )
    .separator()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::parse_address;

    fn addr(s: &str) -> Address {
        parse_address(s).unwrap()
    }

    fn b256(s: &str) -> B256 {
        s.parse().unwrap()
    }

    /// x402-wire.md §3.1: domain separators computed with viem.
    #[test]
    fn domain_separators_match_viem() {
        assert_eq!(
            domain_separator(
                "USDC",
                "2",
                84532,
                addr("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
            ),
            b256("0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818")
        );
        assert_eq!(
            domain_separator(
                "USD Coin",
                "2",
                8453,
                addr("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913")
            ),
            b256("0x02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f")
        );
        assert_eq!(
            domain_separator(
                "USD Coin",
                "2",
                1,
                addr("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48")
            ),
            b256("0x06c37168a7db5138defc7866392bb87a741f9b3d104deb5094588ce041cae335")
        );
    }

    #[test]
    fn type_hash_matches_spec() {
        assert_eq!(
            keccak256(b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"),
            b256("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
        );
    }

    fn vector_auth(valid_after: u64) -> Authorization {
        let mut nonce = [0u8; 32];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = u8::try_from(i + 1).unwrap();
        }
        Authorization {
            from: addr("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
            to: addr("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            value: U256::from(10000u64),
            valid_after,
            valid_before: 1_740_672_214,
            nonce,
        }
    }

    /// x402-wire.md §8 V-1 and V-2 digests (produced by @x402/evm 2.27.0).
    #[test]
    fn digests_match_official_vectors() {
        let sep = domain_separator(
            "USDC",
            "2",
            84532,
            addr("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
        );
        assert_eq!(
            vector_auth(0).signing_hash(&sep),
            b256("0x588c7006b96b52765bbe3b9603417d1aed5e4655bb7b739231b0feeed261446a")
        );
        assert_eq!(
            vector_auth(1_740_671_554).signing_hash(&sep),
            b256("0xff36ba41759c992f365984891d57e7e1150a3dde30ae65350c378c2925479d25")
        );
    }

    /// rust-deps.md §4 golden vector (alloy and eth-account agree).
    #[test]
    fn digest_matches_eth_account_vector() {
        let mut nonce = [0u8; 32];
        nonce[31] = 42;
        let auth = Authorization {
            from: addr("0x1111111111111111111111111111111111111111"),
            to: addr("0x2222222222222222222222222222222222222222"),
            value: U256::from(1_000_042u64),
            valid_after: 0,
            valid_before: 1_900_000_000,
            nonce,
        };
        let sep = domain_separator(
            "USD Coin",
            "2",
            8453,
            addr("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
        );
        assert_eq!(
            auth.signing_hash(&sep),
            b256("0xc80c1438eac680cf34ee292ae1ce77e2fa25304fb8a92659d1b2a1e97dcccd36")
        );
    }
}
