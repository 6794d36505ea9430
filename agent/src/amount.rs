//! `max_amount`: the most the caller will pay for one request, in human units (`0.05`,
//! `0.05 USDC`, `$0.05`), read with the policy's own parser and compared as integers.

use wallet_policy::{
    amount::{atomic_to_units, format_decimal, parse_decimal, parse_human_in, UNIT_DECIMALS},
    U256,
};
use wallet_proto::gateway::v1 as gw;

use crate::{wire::Offer, PayError};

/// A parsed `max_amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MaxAmount {
    /// As the caller wrote it.
    pub text: String,
    /// In 18-decimal units.
    units: U256,
    /// The symbol written (`USDC`; `USD` for `$`), upper-cased.
    symbol: Option<String>,
}

impl MaxAmount {
    /// Parses `0.05`, `0.05 USDC` or `$0.05`; a unit must be `USD` or one of `units` (the
    /// symbols of the enclave's asset registry).
    pub(crate) fn parse<S: AsRef<str>>(text: &str, units: &[S]) -> Result<Self, PayError> {
        let h = parse_human_in(text, units)
            .map_err(|e| PayError::Usage(format!("--max-amount {text:?}: {e}")))?;
        Ok(Self { text: text.trim().to_owned(), units: h.units, symbol: h.symbol })
    }

    /// Checks the number of `text` before the registry is known (any unit is accepted here;
    /// [`Self::parse`] checks it against the registry).
    pub(crate) fn check_syntax(text: &str) -> Result<(), PayError> {
        let unit = text.trim().trim_start_matches('$').split_whitespace().nth(1).unwrap_or("");
        Self::parse(text, &[unit]).map(|_| ())
    }

    /// Whether `atomic` units of an asset with `decimals` and `symbol` are within the limit;
    /// `None` when they cannot be compared (another unit, an unreadable amount).
    pub(crate) fn allows_atomic(&self, atomic: &str, decimals: u8, symbol: &str) -> Option<bool> {
        if !self.symbol_matches(symbol) {
            return Some(false);
        }
        let atomic = parse_decimal(atomic, 0).ok()?;
        Some(atomic_to_units(atomic, decimals)? <= self.units)
    }

    /// Whether a human amount (`0.01`) of an asset with `symbol` is within the limit.
    pub(crate) fn allows_human(&self, human: &str, symbol: &str) -> Option<bool> {
        if !self.symbol_matches(symbol) {
            return Some(false);
        }
        Some(parse_decimal(human, UNIT_DECIMALS).ok()? <= self.units)
    }

    fn symbol_matches(&self, symbol: &str) -> bool {
        match &self.symbol {
            None => true,
            // `$0.05` means dollars: any USD stablecoin (USDC, USDT0, USD₮0).
            Some(s) if s == "USD" => symbol.to_uppercase().starts_with("USD"),
            Some(s) => s.eq_ignore_ascii_case(symbol),
        }
    }
}

/// An option with its price in human units, when its asset is in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Priced {
    /// The option.
    pub offer: Offer,
    /// The registry's entry: decimals and symbol.
    pub asset: Option<(u8, String)>,
}

impl Priced {
    /// Prices `offer` with the registry `assets`.
    pub(crate) fn new(offer: Offer, assets: &[gw::Asset]) -> Self {
        let asset = offer.caip2.as_deref().and_then(|net| {
            assets
                .iter()
                .find(|a| a.network == net && a.address.eq_ignore_ascii_case(&offer.asset))
                .and_then(|a| Some((u8::try_from(a.decimals).ok()?, a.symbol.clone())))
        });
        Self { offer, asset }
    }

    /// `0.01` (human units), when priced and the amount reads.
    pub(crate) fn human(&self) -> Option<String> {
        let (decimals, _) = self.asset.as_ref()?;
        let atomic = parse_decimal(&self.offer.amount, 0).ok()?;
        Some(format_decimal(atomic, *decimals))
    }

    /// The registry symbol.
    pub(crate) fn symbol(&self) -> Option<&str> {
        self.asset.as_ref().map(|(_, s)| s.as_str())
    }

    /// `0.01 USDC`, or the atomic amount and the token address when not priced.
    pub(crate) fn describe(&self) -> String {
        match (self.human(), self.symbol()) {
            (Some(h), Some(s)) => format!("{h} {s} on {}", self.offer.network),
            _ => format!(
                "{} atomic units of {} on {}",
                self.offer.amount, self.offer.asset, self.offer.network
            ),
        }
    }

    /// Whether the option is within `max`: `None` when it cannot be priced.
    pub(crate) fn within(&self, max: &MaxAmount) -> Option<bool> {
        let (decimals, symbol) = self.asset.as_ref()?;
        max.allows_atomic(&self.offer.amount, *decimals, symbol)
    }
}

/// What to ask the enclave to sign for under `max_amount`: the indices of `accepts` that are
/// priced within the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Every option the enclave could sign is within the limit (or there is no limit): send
    /// the requirement as the server sent it.
    AsIs,
    /// Only these options are within the limit: send the requirement restricted to them.
    Only(Vec<usize>),
    /// No option can be priced within the limit; the cheapest priced option, if any.
    Over(Option<String>),
}

/// Decides the [`Plan`] for `priced` options under `max`.
///
/// Options whose asset is not in the registry cannot be signed by the enclave at all
/// (`ASSET_NOT_ALLOWED`); they are left to it to refuse when no option is priced.
pub(crate) fn plan(priced: &[Priced], max: Option<&MaxAmount>) -> Plan {
    let Some(max) = max else { return Plan::AsIs };
    let within: Vec<usize> =
        priced.iter().filter(|p| p.within(max) == Some(true)).map(|p| p.offer.index).collect();
    let any_priced = priced.iter().any(|p| p.asset.is_some());
    if within.is_empty() {
        if !any_priced {
            // Nothing is priced: the enclave can sign none of them and will say why. Its
            // answer is still checked against the limit before anything is sent.
            return Plan::AsIs;
        }
        let cheapest = priced
            .iter()
            .filter_map(|p| {
                let (d, _) = p.asset.as_ref()?;
                let units = atomic_to_units(parse_decimal(&p.offer.amount, 0).ok()?, *d)?;
                Some((units, p.describe()))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, d)| d);
        return Plan::Over(cheapest);
    }
    if within.len() == priced.len() {
        Plan::AsIs
    } else {
        Plan::Only(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::offer;

    fn asset(network: &str, address: &str, decimals: u32, symbol: &str) -> gw::Asset {
        gw::Asset {
            network: network.into(),
            address: address.into(),
            decimals,
            symbol: symbol.into(),
            ..Default::default()
        }
    }

    /// v2 options (`amount`), or v1 ones (`maxAmountRequired`) for a v1 network name.
    fn priced(amounts: &[(&str, &str, &str)], assets: &[gw::Asset]) -> Vec<Priced> {
        amounts
            .iter()
            .enumerate()
            .map(|(i, (net, a, amount))| {
                let v1 = !net.starts_with("eip155:");
                let key = if v1 { "maxAmountRequired" } else { "amount" };
                let v = serde_json::json!({"network": net, "asset": a, key: amount});
                Priced::new(offer(if v1 { 1 } else { 2 }, i, &v), assets)
            })
            .collect()
    }

    const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    const OTHER: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

    #[test]
    fn max_amount_is_compared_in_integers() {
        let units = ["USDC", "USDT0"];
        let max = MaxAmount::parse("0.05", &units).unwrap();
        assert_eq!(max.allows_atomic("50000", 6, "USDC"), Some(true));
        assert_eq!(max.allows_atomic("50001", 6, "USDC"), Some(false));
        assert_eq!(max.allows_atomic("50000000000000000", 18, "DAI"), Some(true));
        assert_eq!(max.allows_atomic("50000000000000001", 18, "DAI"), Some(false));
        assert_eq!(max.allows_atomic("1e5", 6, "USDC"), None);
        assert_eq!(max.allows_human("0.05", "USDC"), Some(true));
        assert_eq!(max.allows_human("0.050001", "USDC"), Some(false));
        let usdc = MaxAmount::parse("0.05 usdc", &units).unwrap();
        assert_eq!(usdc.allows_atomic("1", 6, "USDC"), Some(true));
        assert_eq!(usdc.allows_atomic("1", 6, "USDT0"), Some(false), "another unit never fits");
        let dollars = MaxAmount::parse("$0.05", &units).unwrap();
        assert_eq!(dollars.allows_atomic("50000", 6, "USDT0"), Some(true));
        assert_eq!(dollars.allows_atomic("1", 18, "WETH"), Some(false));
        for bad in ["", "abc", "-1", "0.1.2", "1e3", "1 EURC"] {
            assert!(matches!(MaxAmount::parse(bad, &units), Err(PayError::Usage(_))), "{bad}");
        }
        // Before the registry is known, any unit passes; the number is checked.
        assert!(MaxAmount::check_syntax("1 TUSD").is_ok());
        assert!(MaxAmount::check_syntax("$0.5").is_ok());
        assert!(MaxAmount::check_syntax("0.1.2 USDC").is_err());
    }

    #[test]
    fn plans_keep_only_what_fits() {
        let assets = [asset("eip155:84532", &USDC.to_lowercase(), 6, "USDC")];
        let max = MaxAmount::parse("0.05", &["USDC"]).unwrap();
        let p = priced(&[("eip155:84532", USDC, "10000")], &assets);
        assert_eq!(p[0].describe(), "0.01 USDC on eip155:84532");
        assert_eq!(plan(&p, Some(&max)), Plan::AsIs);
        assert_eq!(plan(&p, None), Plan::AsIs);
        let p = priced(
            &[
                ("eip155:84532", USDC, "100000"),
                ("base-sepolia", USDC, "20000"),
                ("eip155:84532", OTHER, "1"),
            ],
            &assets,
        );
        assert_eq!(plan(&p, Some(&max)), Plan::Only(vec![1]), "v1 names are priced too");
        let p =
            priced(&[("eip155:84532", USDC, "100000"), ("eip155:84532", USDC, "60000")], &assets);
        assert_eq!(plan(&p, Some(&max)), Plan::Over(Some("0.06 USDC on eip155:84532".into())));
        let p = priced(&[("eip155:1", OTHER, "1")], &assets);
        assert_eq!(plan(&p, Some(&max)), Plan::AsIs, "the enclave refuses unknown assets");
        assert_eq!(p[0].describe(), format!("1 atomic units of {OTHER} on eip155:1"));
    }

    /// The pre-check prices what the enclave charges: a v1 server's `maxAmountRequired`, never
    /// a small `amount` beside it; an option whose price cannot be read is never within the
    /// limit, and the enclave is not asked to sign it.
    #[test]
    fn a_v1_server_cannot_show_one_price_and_charge_another() {
        let assets = [asset("eip155:84532", USDC, 6, "USDC")];
        let max = MaxAmount::parse("0.05", &["USDC"]).unwrap();
        let trick = serde_json::json!({
            "network": "base-sepolia", "asset": USDC, "amount": "1", "maxAmountRequired": "60000"
        });
        let p = vec![Priced::new(offer(1, 0, &trick), &assets)];
        assert_eq!(p[0].within(&max), Some(false));
        assert_eq!(plan(&p, Some(&max)), Plan::Over(Some("0.06 USDC on base-sepolia".into())));
        // Only `amount` in v1: unreadable, so not priced, so refused under a limit.
        let only_amount =
            serde_json::json!({"network": "base-sepolia", "asset": USDC, "amount": "1"});
        let p = vec![Priced::new(offer(1, 0, &only_amount), &assets)];
        assert_eq!(p[0].within(&max), None);
        assert_eq!(plan(&p, Some(&max)), Plan::Over(None));
        // Beside a fitting option, it is left out.
        let fits = serde_json::json!({"network": "base-sepolia", "asset": USDC, "maxAmountRequired": "10000"});
        let p = vec![
            Priced::new(offer(1, 0, &trick), &assets),
            Priced::new(offer(1, 1, &fits), &assets),
        ];
        assert_eq!(plan(&p, Some(&max)), Plan::Only(vec![1]));
        // A v1 name in a v2 option is not what the enclave pays on: not priced.
        let v2_named = serde_json::json!({"network": "base-sepolia", "asset": USDC, "amount": "1"});
        assert_eq!(Priced::new(offer(2, 0, &v2_named), &assets).asset, None);
    }
}
