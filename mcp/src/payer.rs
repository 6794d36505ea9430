//! [`PayerWallet`]: the [`Wallet`] of production — `wallet_agent::Payer` (the session
//! credential; the enclave, through the gateway, signs within policy and answers the session's
//! budget and history).

use serde_json::{json, Map, Value};
use wallet_agent::{FetchRequest, PayError, PayOptions, Payer, PaymentDetails};
use wallet_client::now_ms;
use wallet_proto::gateway::v1 as gw;

use crate::wallet::{ErrorKind, Fetched, HttpCall, Payment, Signed, Wallet, WalletError};

/// The wallet of an agent session, through `wallet-agent`.
#[derive(Debug, Clone)]
pub struct PayerWallet {
    payer: Payer,
}

impl PayerWallet {
    /// Wraps `payer`.
    #[must_use]
    pub fn new(payer: Payer) -> Self {
        Self { payer }
    }

    /// The payer.
    #[must_use]
    pub fn payer(&self) -> &Payer {
        &self.payer
    }
}

fn request(call: HttpCall) -> FetchRequest {
    FetchRequest {
        method: call.method,
        url: call.url,
        headers: call.headers,
        body: call.body,
        options: PayOptions {
            max_amount: call.max_amount,
            idempotency_key: call.idempotency_key,
            ..PayOptions::default()
        },
        follow_redirects: true,
    }
}

fn payment(p: &PaymentDetails) -> Payment {
    Payment {
        x402_version: p.x402_version,
        amount: p.amount.clone(),
        charged: p.charged.clone(),
        asset: p.asset.clone(),
        asset_symbol: p.asset_symbol.clone(),
        network: p.network.clone(),
        pay_to: p.pay_to.clone(),
        payer: p.payer.clone(),
        transaction: p.transaction.clone(),
        settlement: p.settle_response.clone(),
        idempotency_key: p.idempotency_key.clone(),
        replayed: p.replayed,
        session_spent: p.session_spent.clone(),
        session_remaining: p.session_remaining.clone(),
    }
}

/// A `wallet-agent` error as the MCP tools report it: its stable code, and a message without
/// `walletctl`'s flags (the tools say how to retry in their own terms).
#[must_use]
pub fn wallet_error(e: PayError) -> WalletError {
    let code = e.reason_code();
    match e {
        PayError::Usage(m) => WalletError::new(ErrorKind::Usage, &code, m),
        PayError::Denied { reason, message } => {
            WalletError::new(ErrorKind::Denied, &reason, message)
        }
        PayError::Held { approval_id, idempotency_key, message } => {
            WalletError::held(&approval_id, &idempotency_key, message)
        }
        e @ PayError::OverMaxAmount { .. } => WalletError::new(
            ErrorKind::OverMaxAmount,
            &code,
            e.to_string().replace("--max-amount", "maxAmount"),
        ),
        PayError::Network { message, payment: paid } => {
            let mut w = WalletError::new(
                ErrorKind::Network,
                &code,
                match &paid {
                    Some(p) => format!(
                        "{message}; a payment of {} {} was sent and may have been accepted",
                        p.charged, p.asset_symbol
                    ),
                    None => message,
                },
            );
            w.idempotency_key = paid.as_ref().map(|p| p.idempotency_key.clone());
            w.payment = paid.as_deref().map(payment);
            w
        }
        PayError::ServerRefused {
            status, reason, settle_response, payment: paid, body, ..
        } => {
            let mut w = WalletError::new(
                ErrorKind::ServerRefused,
                &code,
                format!(
                    "the server refused the payment (HTTP {status}): {reason} (sent {} {} to {} on {})",
                    paid.charged, paid.asset_symbol, paid.pay_to, paid.network
                ),
            );
            let mut p = payment(&paid);
            if settle_response.is_some() {
                p.settlement = settle_response.map(|b| *b);
            }
            w.payment = Some(p);
            w.response = Some((status, body));
            w
        }
        PayError::OutcomeUnknown { error, idempotency_key } => {
            let mut w = WalletError::new(
                ErrorKind::OutcomeUnknown,
                &code,
                format!("{error}; the payment may have been signed"),
            );
            w.idempotency_key = Some(idempotency_key);
            w
        }
        PayError::Client(e) => {
            let code = match e.reason_code() {
                Some(r) => r.to_owned(),
                None if e.code() == tonic::Code::Unavailable => "GATEWAY_UNAVAILABLE".to_owned(),
                None => code,
            };
            WalletError::new(ErrorKind::Other, &code, e.to_string())
        }
        other => WalletError::new(ErrorKind::Other, &code, other.to_string()),
    }
}

/// Renames the keys of `v`'s object (not of anything below it) from `snake_case` to
/// `camelCase`.
fn camel_keys(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let mut out = String::with_capacity(k.len());
                    let mut up = false;
                    for c in k.chars() {
                        if c == '_' {
                            up = true;
                        } else if up {
                            out.extend(c.to_uppercase());
                            up = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, v)
                })
                .collect(),
        ),
        other => other,
    }
}

/// `wallet_agent::Inspection` as the tool reports it: the wallet's own fields in camelCase,
/// the server's `accepts`, `resource` and `extensions` verbatim.
fn inspection_json(v: Value) -> Value {
    let mut v = camel_keys(v);
    if let Some(options) = v.get_mut("options").and_then(Value::as_array_mut) {
        for o in options.iter_mut() {
            *o = camel_keys(o.take());
        }
    }
    if let Some(p) = v.get_mut("preview").filter(|p| p.is_object()) {
        *p = camel_keys(p.take());
        if let Some(c) = p.get_mut("chosen").filter(|c| c.is_object()) {
            *c = camel_keys(c.take());
        }
    }
    v
}

/// Unix seconds as RFC 3339 (UTC), or empty for 0.
fn rfc3339(secs: u64) -> String {
    if secs == 0 {
        return String::new();
    }
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The enclave's `SessionBudget` as `get_budget` reports it.
#[must_use]
pub fn budget_json(b: &gw::SessionBudget) -> Value {
    let now = now_ms() / 1000;
    let windows: Vec<Value> = b
        .windows
        .iter()
        .map(|w| {
            let mut o = Map::new();
            o.insert("scope".into(), json!(w.scope));
            if !w.payee.is_empty() {
                o.insert("payee".into(), json!(w.payee));
            }
            o.insert("windowSeconds".into(), json!(w.window_seconds));
            if w.max_payments > 0 {
                o.insert("maxPayments".into(), json!(w.max_payments));
            } else {
                o.insert("max".into(), json!(w.max));
                o.insert("spent".into(), json!(w.spent));
                o.insert("left".into(), json!(w.left));
            }
            o.insert("payments".into(), json!(w.payments));
            Value::Object(o)
        })
        .collect();
    let rules: Vec<Value> = b
        .rule_limits
        .iter()
        .map(|r| {
            json!({
                "rule": r.rule, "maxPerPayment": r.max_per_payment, "networks": r.networks,
                "assets": r.assets, "payees": r.payees, "above": r.above, "action": r.action,
            })
        })
        .collect();
    json!({
        "sessionId": b.session_id,
        "walletId": b.wallet_id,
        "walletAddress": b.wallet_address,
        "unit": b.unit,
        "asOf": rfc3339(b.as_of_ms / 1000),
        "expiresAt": rfc3339(b.expires_at),
        "expiresInSeconds": b.expires_at.saturating_sub(now),
        "expired": b.expired,
        "revoked": b.revoked,
        "walletFrozen": b.wallet_frozen,
        "hasPolicy": b.has_policy,
        "policyVersion": b.policy_version,
        "maxPerPayment": b.max_per_payment,
        "maxPaymentNow": b.max_payment_now,
        "sessionCap": b.session_cap,
        "sessionSpent": b.session_spent,
        "sessionLeft": b.session_left,
        "windows": windows,
        "ruleLimits": rules,
        "approvalAbove": b.approval_above,
        "approvalFirstTimePayee": b.approval_first_time_payee,
        "networks": b.networks,
        "assets": b.assets,
        "payees": b.payees,
    })
}

fn seconds(s: u64) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A few lines a person (or a model) reads about the budget.
#[must_use]
pub fn budget_text(b: &gw::SessionBudget) -> String {
    let or_none = |s: &str| if s.is_empty() { "none".to_owned() } else { s.to_owned() };
    let mut t = format!(
        "Session {} of wallet {} ({}). Amounts are in token units (1 = one USDC).",
        b.session_id, b.wallet_id, b.wallet_address
    );
    let mut state = Vec::new();
    if b.revoked {
        state.push("REVOKED");
    }
    if b.expired {
        state.push("EXPIRED");
    }
    if b.wallet_frozen {
        state.push("WALLET FROZEN");
    }
    if !b.has_policy {
        state.push("NO POLICY (every payment is denied)");
    }
    if !state.is_empty() {
        t.push_str(&format!("\nState: {}: nothing can be paid.", state.join(", ")));
    }
    t.push_str(&format!(
        "\nLargest payment possible now: {}\nPer-payment limit: {}\nSession cap: {}; spent {}, left {}",
        or_none(&b.max_payment_now),
        or_none(&b.max_per_payment),
        or_none(&b.session_cap),
        b.session_spent,
        b.session_left
    ));
    for w in &b.windows {
        let who =
            if w.payee.is_empty() { w.scope.clone() } else { format!("{} {}", w.scope, w.payee) };
        if w.max_payments > 0 {
            t.push_str(&format!(
                "\nRate limit ({who}, {}): {} of {} payments used",
                seconds(w.window_seconds),
                w.payments,
                w.max_payments
            ));
        } else if w.spent.is_empty() {
            t.push_str(&format!(
                "\nBudget ({who}, {}): at most {}",
                seconds(w.window_seconds),
                w.max
            ));
        } else {
            t.push_str(&format!(
                "\nBudget ({who}, rolling {}): {} max, {} spent, {} left",
                seconds(w.window_seconds),
                w.max,
                w.spent,
                w.left
            ));
        }
    }
    for r in &b.rule_limits {
        t.push_str(&format!(
            "\nRule {:?} ({}): at most {} per payment{}",
            r.rule,
            r.action,
            r.max_per_payment,
            if r.networks.is_empty() {
                String::new()
            } else {
                format!(" on {}", r.networks.join(", "))
            }
        ));
    }
    if !b.approval_above.is_empty() {
        t.push_str(&format!(
            "\nPayments above {} are held for a human's approval.",
            b.approval_above
        ));
    }
    if b.approval_first_time_payee {
        t.push_str("\nThe first payment to a new payee is held for a human's approval.");
    }
    if !b.networks.is_empty() {
        t.push_str(&format!("\nNetworks: {}", b.networks.join(", ")));
    }
    if !b.payees.is_empty() {
        t.push_str(&format!("\nPayees: {}", b.payees.join(", ")));
    }
    let now = now_ms() / 1000;
    t.push_str(&format!(
        "\nExpires {} (in {} s).",
        rfc3339(b.expires_at),
        b.expires_at.saturating_sub(now)
    ));
    t
}

/// The enclave's `ListPaymentsResponse` as `list_payments` reports it.
#[must_use]
pub fn payments_json(r: &gw::ListPaymentsResponse) -> Value {
    let payments: Vec<Value> = r
        .payments
        .iter()
        .map(|p| {
            let mut o = Map::new();
            o.insert("at".into(), json!(rfc3339(p.at_ms / 1000)));
            o.insert("atMs".into(), json!(p.at_ms));
            o.insert("outcome".into(), json!(p.outcome));
            for (k, v) in [
                ("reason", &p.reason),
                ("message", &p.message),
                ("amount", &p.amount),
                ("amountHuman", &p.amount_human),
                ("asset", &p.asset),
                ("assetSymbol", &p.asset_symbol),
                ("network", &p.network),
                ("payTo", &p.pay_to),
                ("idempotencyKey", &p.idempotency_key),
                ("approvalId", &p.approval_id),
                ("approvalState", &p.approval_state),
            ] {
                if !v.is_empty() {
                    o.insert(k.into(), json!(v));
                }
            }
            Value::Object(o)
        })
        .collect();
    json!({"payments": payments, "count": r.payments.len(), "kept": r.kept})
}

/// One line per record.
#[must_use]
pub fn payments_text(r: &gw::ListPaymentsResponse) -> String {
    if r.payments.is_empty() {
        return "No payments or refusals yet in this session.".to_owned();
    }
    let mut t = format!("{} of {} records, newest first:", r.payments.len(), r.kept);
    for p in &r.payments {
        t.push_str(&format!("\n- {} {}", rfc3339(p.at_ms / 1000), p.outcome.to_uppercase()));
        if !p.amount_human.is_empty() {
            t.push_str(&format!(" {} {}", p.amount_human, p.asset_symbol));
        }
        if !p.network.is_empty() {
            t.push_str(&format!(" on {}", p.network));
        }
        if !p.pay_to.is_empty() {
            t.push_str(&format!(" to {}", p.pay_to));
        }
        if !p.reason.is_empty() {
            t.push_str(&format!(" [{}]", p.reason));
        }
        if !p.approval_id.is_empty() {
            t.push_str(&format!(" hold {} ({})", p.approval_id, p.approval_state));
        }
        if !p.idempotency_key.is_empty() {
            t.push_str(&format!(" key {}", p.idempotency_key));
        }
    }
    t
}

impl Wallet for PayerWallet {
    async fn fetch(&self, call: HttpCall) -> Result<Fetched, WalletError> {
        let o = self.payer.fetch(request(call)).await.map_err(wallet_error)?;
        Ok(Fetched {
            status: o.status,
            headers: o.headers,
            body: o.body,
            payment: o.payment.as_ref().map(payment),
        })
    }

    async fn inspect(&self, call: HttpCall) -> Result<Value, WalletError> {
        let i = self.payer.inspect(request(call)).await.map_err(wallet_error)?;
        let v = serde_json::to_value(&i)
            .map_err(|e| WalletError::other(format!("cannot encode the inspection: {e}")))?;
        Ok(inspection_json(v))
    }

    async fn sign(
        &self,
        payment_required: &Value,
        max_amount: Option<&str>,
        idempotency_key: &str,
    ) -> Result<Signed, WalletError> {
        let opts = PayOptions {
            max_amount: max_amount.map(str::to_owned),
            idempotency_key: Some(idempotency_key.to_owned()),
            ..PayOptions::default()
        };
        let s =
            self.payer.sign(&payment_required.to_string(), &opts).await.map_err(wallet_error)?;
        Ok(Signed {
            payload: s.payload,
            header_value: s.header_value,
            payment: payment(&s.details),
        })
    }

    async fn budget(&self) -> Result<Value, WalletError> {
        let req = self.payer.credential().budget_request(now_ms());
        let b = self
            .payer
            .gateway()
            .get_budget(req)
            .await
            .map_err(|e| wallet_error(PayError::from(e)))?;
        let mut v = budget_json(&b);
        v["summary"] = json!(budget_text(&b));
        Ok(v)
    }

    async fn payments(&self, limit: u32) -> Result<Value, WalletError> {
        let req = self.payer.credential().payments_request(limit, now_ms());
        let r = self
            .payer
            .gateway()
            .list_payments(req)
            .await
            .map_err(|e| wallet_error(PayError::from(e)))?;
        let mut v = payments_json(&r);
        v["summary"] = json!(payments_text(&r));
        Ok(v)
    }

    fn describe(&self) -> String {
        let c = self.payer.credential();
        format!("session {} of wallet {} at {}", c.session_id, c.wallet_id, c.wallet_address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspections_are_camel_case_but_the_servers_json_is_verbatim() {
        let v = json!({
            "x402_version": 2,
            "accepts": [{"max_timeout_seconds_is_not_ours": 1, "payTo": "0x1"}],
            "extensions": {"payment_identifier": {}},
            "options": [{"asset_symbol": "USDC", "amount_human": "0.01", "pay_to": "0x1"}],
            "preview": {"would_hold": false, "chosen": {"asset_symbol": "USDC"}},
            "preview_unavailable": null
        });
        let c = inspection_json(v);
        assert_eq!(c["x402Version"], 2);
        assert!(c["accepts"][0].get("max_timeout_seconds_is_not_ours").is_some());
        assert!(c["extensions"].get("payment_identifier").is_some());
        assert_eq!(c["options"][0]["amountHuman"], "0.01");
        assert_eq!(c["preview"]["wouldHold"], false);
        assert_eq!(c["preview"]["chosen"]["assetSymbol"], "USDC");
        assert!(c.get("previewUnavailable").is_some());
    }

    #[test]
    fn budgets_read_well() {
        let b = gw::SessionBudget {
            session_id: "s_1".into(),
            wallet_id: "w_1".into(),
            unit: "token".into(),
            expires_at: 4_102_444_800,
            has_policy: true,
            session_cap: "0.05".into(),
            session_spent: "0.01".into(),
            session_left: "0.04".into(),
            max_per_payment: "0.1".into(),
            max_payment_now: "0.04".into(),
            windows: vec![
                gw::BudgetWindow {
                    scope: "session".into(),
                    window_seconds: 86_400,
                    max: "1".into(),
                    spent: "0.2".into(),
                    left: "0.8".into(),
                    payments: 3,
                    ..Default::default()
                },
                gw::BudgetWindow {
                    scope: "wallet".into(),
                    window_seconds: 60,
                    max_payments: 10,
                    payments: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let v = budget_json(&b);
        assert_eq!(v["expiresAt"], "2100-01-01T00:00:00Z");
        assert_eq!(
            (v["sessionLeft"].as_str(), v["maxPaymentNow"].as_str()),
            (Some("0.04"), Some("0.04"))
        );
        assert_eq!(v["windows"][0]["left"], "0.8");
        assert_eq!(v["windows"][1]["maxPayments"], 10);
        assert!(v["windows"][1].get("left").is_none());
        let t = budget_text(&b);
        assert!(t.contains("Session cap: 0.05; spent 0.01, left 0.04"), "{t}");
        assert!(t.contains("Budget (session, rolling 1d): 1 max, 0.2 spent, 0.8 left"), "{t}");
        assert!(t.contains("Rate limit (wallet, 1m): 1 of 10 payments used"), "{t}");
        assert!(!t.contains("State:"), "{t}");
    }

    #[test]
    fn payment_records_read_well() {
        let r = gw::ListPaymentsResponse {
            payments: vec![
                gw::PaymentRecord {
                    at_ms: 4_102_444_800_000,
                    outcome: "denied".into(),
                    reason: "PER_TX_LIMIT".into(),
                    amount_human: "0.2".into(),
                    asset_symbol: "USDC".into(),
                    ..Default::default()
                },
                gw::PaymentRecord {
                    outcome: "held".into(),
                    approval_id: "ap_1".into(),
                    approval_state: "pending".into(),
                    idempotency_key: "k".into(),
                    ..Default::default()
                },
            ],
            kept: 7,
        };
        let v = payments_json(&r);
        assert_eq!((v["count"].as_u64(), v["kept"].as_u64()), (Some(2), Some(7)));
        assert_eq!(v["payments"][0]["reason"], "PER_TX_LIMIT");
        assert!(v["payments"][0].get("approvalId").is_none(), "empty fields are left out");
        assert_eq!(v["payments"][1]["approvalState"], "pending");
        let t = payments_text(&r);
        assert!(
            t.contains("DENIED 0.2 USDC [PER_TX_LIMIT]") && t.contains("hold ap_1 (pending)"),
            "{t}"
        );
    }

    #[test]
    fn errors_keep_their_codes() {
        let held = wallet_error(PayError::Held {
            approval_id: "ap_9".into(),
            idempotency_key: "k".into(),
            message: "m".into(),
        });
        assert_eq!(
            (held.kind, held.code.as_str(), held.hold_id.as_deref()),
            (ErrorKind::Held, "APPROVAL_PENDING", Some("ap_9"))
        );
        let denied = wallet_error(PayError::Denied {
            reason: "SESSION_CAP".into(),
            message: "SESSION_CAP: over".into(),
        });
        assert_eq!((denied.kind, denied.code.as_str()), (ErrorKind::Denied, "SESSION_CAP"));
        let over = wallet_error(PayError::OverMaxAmount {
            max_amount: "0.01".into(),
            asked: "0.02 USDC".into(),
            signed_not_sent: false,
        });
        assert_eq!(over.code, "OVER_MAX_AMOUNT");
        assert!(
            over.message.contains("maxAmount") && !over.message.contains("--max-amount"),
            "{}",
            over.message
        );
    }
}
