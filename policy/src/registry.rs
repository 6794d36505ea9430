//! The asset registry: which tokens the wallet signs for, with the EIP-712 domain each one uses.
//!
//! A paid server chooses `asset`, `extra.name` and `extra.version`. The enclave signs only for
//! assets in this registry and only with the registry's domain; a requirement that disagrees is
//! denied (`DOMAIN_MISMATCH`), never signed.

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};

use crate::{address::parse_address, eip712::domain_separator};

/// One token on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetInfo {
    /// CAIP-2 network id, `eip155:<chain id>`.
    pub network: String,
    /// Token contract address.
    pub address: Address,
    /// EIP-712 domain `name` of the token contract.
    pub name: String,
    /// EIP-712 domain `version`.
    pub version: String,
    /// Token decimals (at most 18).
    pub decimals: u8,
    /// Display symbol.
    pub symbol: String,
}

impl AssetInfo {
    /// Validates and builds an entry.
    ///
    /// # Errors
    /// A sentence naming the bad field.
    pub fn new(
        network: &str,
        address: &str,
        name: &str,
        version: &str,
        decimals: u32,
        symbol: &str,
    ) -> Result<Self, String> {
        chain_id(network)?;
        let address = parse_address(address)?;
        if name.is_empty() || version.is_empty() {
            return Err("asset EIP-712 name and version must not be empty".to_owned());
        }
        let decimals =
            u8::try_from(decimals)
                .ok()
                .filter(|d| *d <= crate::amount::UNIT_DECIMALS)
                .ok_or_else(|| format!("asset decimals {decimals} must be between 0 and 18"))?;
        let symbol =
            if symbol.trim().is_empty() { "TOKEN".to_owned() } else { symbol.trim().to_owned() };
        Ok(Self {
            network: network.to_owned(),
            address,
            name: name.to_owned(),
            version: version.to_owned(),
            decimals,
            symbol,
        })
    }

    /// Numeric chain id of [`Self::network`].
    #[must_use]
    pub fn chain_id(&self) -> u64 {
        chain_id(&self.network).unwrap_or_default()
    }

    /// The EIP-712 domain separator this asset signs under.
    #[must_use]
    pub fn domain_separator(&self) -> B256 {
        domain_separator(&self.name, &self.version, self.chain_id(), self.address)
    }
}

/// Parses `eip155:<decimal chain id>`.
///
/// # Errors
/// A sentence when the network is not an EVM CAIP-2 id.
pub fn chain_id(network: &str) -> Result<u64, String> {
    let id = network
        .strip_prefix("eip155:")
        .ok_or_else(|| format!("network {network:?} is not an eip155:<chain id> network"))?;
    if id.is_empty()
        || id.len() > 19
        || !id.bytes().all(|b| b.is_ascii_digit())
        || (id.len() > 1 && id.starts_with('0'))
    {
        return Err(format!("network {network:?} has no valid decimal chain id"));
    }
    id.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("network {network:?} has no valid chain id"))
}

/// The preloaded registry: exactly the EIP-3009 entries of the official x402 default-asset
/// table, `DEFAULT_ASSETS` of `@x402/evm` 2.27.0 (`src/defaultAssets.ts`), in its order, as
/// `(CAIP-2 network, token address, EIP-712 name, EIP-712 version, decimals, symbol)`.
///
/// The official table's Permit2-only entries (`assetTransferMethod: "permit2"`: MegaUSD on
/// eip155:4326, mUSD on eip155:31612/31611, SBC on eip155:723487/72344, USDC on eip155:38833)
/// are left out: this wallet signs EIP-3009 authorizations only, so it could never pay them.
/// `tests/tests/x402_conformance.rs` compares this table with the installed package, field by
/// field (`tests/x402-compat/default-assets.mjs`).
///
/// Names are UTF-8 and hashed as such in the EIP-712 domain, as viem does: Flare's USDT0 is
/// named `USD₮0` (U+20AE TUGRIK SIGN).
pub const DEFAULT_ASSETS: &[(&str, &str, &str, &str, u32, &str)] = &[
    ("eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "USD Coin", "2", 6, "USDC"),
    ("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2", 6, "USDC"),
    ("eip155:1", "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", "USD Coin", "2", 6, "USDC"),
    ("eip155:43114", "0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E", "USD Coin", "2", 6, "USDC"),
    ("eip155:143", "0x754704Bc059F8C67012fEd69BC8A327a5aafb603", "USDC", "2", 6, "USDC"),
    ("eip155:988", "0x779Ded0c9e1022225f8E0630b35a9b54bE713736", "USDT0", "1", 6, "USDT0"),
    ("eip155:2201", "0x78Cf24370174180738C5B8E352B6D14c83a6c9A9", "USDT0", "1", 6, "USDT0"),
    ("eip155:137", "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359", "USD Coin", "2", 6, "USDC"),
    ("eip155:42161", "0xaf88d065e77c8cC2239327C5EDb3A432268e5831", "USD Coin", "2", 6, "USDC"),
    ("eip155:421614", "0x75faf114eafb1BDbe2F0316DF893fd58CE46AA4d", "USD Coin", "2", 6, "USDC"),
    ("eip155:36900", "0x9cb8142aEBBcdc60AF7c97Af897A67A8f3CA71C2", "USDC.e", "2", 6, "USDC.e"),
    (
        "eip155:190415",
        "0x401eCb1D350407f13ba348573E5630B83638E30D",
        "Bridged USDC",
        "2",
        6,
        "USDC.e",
    ),
    (
        "eip155:181228",
        "0x401eCb1D350407f13ba348573E5630B83638E30D",
        "Bridged USDC",
        "2",
        6,
        "USDC.e",
    ),
    ("eip155:50", "0xfA2958CB79b0491CC627c1557F441eF849Ca8eb1", "USDC", "2", 6, "USDC"),
    ("eip155:51", "0xb5AB69F7bBada22B28e79C8FFAECe55eF1c771D4", "USDC", "2", 6, "USDC"),
    ("eip155:14", "0xe7cd86e13AC4309349F30B3435a9d337750fC82D", "USD\u{20AE}0", "1", 6, "USDT0"),
    ("eip155:42220", "0xcebA9300f2b948710d2653dD7B07f33A8B32118C", "USDC", "2", 6, "USDC"),
    ("eip155:42220", "0x48065fbBE25f71C9282ddf5e1cD6D6A887483D5e", "Tether USD", "1", 6, "USDT"),
    (
        "eip155:42220",
        "0xD2ab3C9A02DBBAB236BfEC45D1d755DF4267F771",
        "Tether America USD",
        "1",
        6,
        "USAT",
    ),
    ("eip155:11142220", "0x01C5C0122039549AD1493B8220cABEdD739BC44E", "USDC", "2", 6, "USDC"),
    ("eip155:1329", "0xe15fC38F6D8c56aF07bbCBe3BAf5708A2Bf42392", "USDC", "2", 6, "USDC"),
    ("eip155:1328", "0x4fCF1784B31630811181f670Aea7A7bEF803eaED", "USDC", "2", 6, "USDC"),
];

/// The preloaded registry.
#[must_use]
pub fn default_assets() -> Vec<AssetInfo> {
    DEFAULT_ASSETS
        .iter()
        .map(|(n, a, name, v, d, s)| {
            AssetInfo::new(n, a, name, v, *d, s)
                .expect("the built-in table is valid, see test. qed")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_is_valid_and_unique() {
        let assets = default_assets();
        assert_eq!(assets.len(), DEFAULT_ASSETS.len());
        let mut keys: Vec<_> = assets.iter().map(|a| (a.network.clone(), a.address)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), assets.len());
        let base_sepolia = assets.iter().find(|a| a.network == "eip155:84532").unwrap();
        assert_eq!(
            base_sepolia.domain_separator(),
            "0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818"
                .parse::<B256>()
                .unwrap()
        );
    }

    /// Issue 10, item 5: the six EIP-3009 defaults of @x402/evm 2.27.0 that were missing, with
    /// their EIP-712 domain separators as viem computes them (`hashDomain`, via
    /// tests/x402-compat/default-assets.mjs): a non-ASCII name is hashed as UTF-8.
    #[test]
    fn the_added_official_defaults_sign_under_viems_domains() {
        let assets = default_assets();
        assert_eq!(assets.len(), 22);
        let flare = assets.iter().find(|a| a.network == "eip155:14").unwrap();
        assert_eq!(flare.name, "USD₮0");
        assert_eq!(flare.symbol, "USDT0");
        for (network, address, separator) in [
            (
                "eip155:36900",
                "0x9cb8142aEBBcdc60AF7c97Af897A67A8f3CA71C2",
                "0x4369b2ef8a73be962c9aaf8dcddc38d022dca40af0729d7e4c80a3b44f6698fa",
            ),
            (
                "eip155:190415",
                "0x401eCb1D350407f13ba348573E5630B83638E30D",
                "0xec205e80d13812cd615a90f0751d6abc05df7ebcbb86c5c50e6abb874d53df6a",
            ),
            (
                "eip155:181228",
                "0x401eCb1D350407f13ba348573E5630B83638E30D",
                "0x770326a81f629cc1072c47674445f4894838dbc10fb9e90abbb0f05c105ba4f2",
            ),
            (
                "eip155:14",
                "0xe7cd86e13AC4309349F30B3435a9d337750fC82D",
                "0x4c53d754dcb2f406ecf83695856d8c10b13296a318d9a481043412bf253d43ae",
            ),
            (
                "eip155:42220",
                "0x48065fbBE25f71C9282ddf5e1cD6D6A887483D5e",
                "0xbcb4d62e4834b598d0eacecd84c0b397a0254e077c41cf2143e394d5701d1088",
            ),
            (
                "eip155:42220",
                "0xD2ab3C9A02DBBAB236BfEC45D1d755DF4267F771",
                "0xe6bbb7920a85afd44befe87c998da24b8b655c972faf8a8acbdf38c829ff8bf2",
            ),
        ] {
            let a = parse_address(address).unwrap();
            let entry = assets
                .iter()
                .find(|x| x.network == network && x.address == a)
                .unwrap_or_else(|| panic!("{network} {address} is missing"));
            assert_eq!(entry.domain_separator(), separator.parse::<B256>().unwrap(), "{network}");
        }
    }

    #[test]
    fn chain_ids() {
        assert_eq!(chain_id("eip155:8453"), Ok(8453));
        for bad in [
            "eip155:",
            "eip155:0",
            "eip155:08453",
            "eip155:-1",
            "solana:abc",
            "base",
            "eip155:99999999999999999999",
        ] {
            assert!(chain_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_validates() {
        assert!(AssetInfo::new(
            "eip155:31337",
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "USDC",
            "2",
            6,
            "USDC"
        )
        .is_ok());
        assert!(AssetInfo::new(
            "eip155:31337",
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "USDC",
            "2",
            19,
            "USDC"
        )
        .is_err());
        assert!(AssetInfo::new(
            "eip155:31337",
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "",
            "2",
            6,
            "USDC"
        )
        .is_err());
        assert!(AssetInfo::new(
            "base",
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "USDC",
            "2",
            6,
            "USDC"
        )
        .is_err());
    }
}
