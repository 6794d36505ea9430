//! [`Payer`]: the session credential, a gateway connection and an HTTP client.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use wallet_client::{now_ms, random_idempotency_key, Credential, GatewayClient};
use wallet_proto::gateway::v1 as gw;

use crate::{
    amount::{plan, MaxAmount, Plan, Priced},
    error::transient,
    http::{self, exchange, settlement_header, Answer, HttpConfig, HttpFailure, Prepared},
    wire::{self, Requirement},
    ChosenOption, FetchOutcome, FetchRequest, Inspection, OptionSummary, PayError, PayOptions,
    PaymentDetails, Preview, SignedPayment,
};

/// How many times a signing call is made in all when its answer is lost on the way back (each
/// time with the same idempotency key: one payment at most).
const SIGN_ATTEMPTS: u32 = 3;

/// A paying HTTP client for one agent session. Cheap to share behind an `Arc`; every method
/// takes `&self`.
///
/// `Debug` shows the session and wallet ids, never the session key.
#[derive(Debug, Clone)]
pub struct Payer {
    gateway: GatewayClient,
    credential: Arc<Credential>,
    http: reqwest::Client,
    config: HttpConfig,
}

impl Payer {
    /// Connects to the gateway at `gateway_url`, or the one recorded in the credential, and
    /// pins the enclave identity recorded in the credential (every answer is then checked
    /// against it; credentials issued before signed answers carry none).
    ///
    /// # Errors
    /// [`PayError::Client`] when the gateway cannot be reached or the URL is malformed;
    /// [`PayError::Usage`] when the credential's enclave identity is not a key.
    pub async fn connect(
        credential: Credential,
        gateway_url: Option<&str>,
    ) -> Result<Payer, PayError> {
        Self::connect_with(credential, gateway_url, HttpConfig::default()).await
    }

    /// [`Self::connect`] with HTTP limits and timeouts.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_with(
        credential: Credential,
        gateway_url: Option<&str>,
        config: HttpConfig,
    ) -> Result<Payer, PayError> {
        let url = gateway_url.unwrap_or(&credential.gateway).to_owned();
        let gateway = GatewayClient::connect(&url).await.map_err(PayError::Client)?;
        Self::new(credential, gateway, config)
    }

    /// A payer over an existing gateway connection (pins the credential's enclave identity,
    /// if it records one).
    ///
    /// # Errors
    /// [`PayError::Usage`] when the credential's enclave identity is not a key;
    /// [`PayError::Other`] when the HTTP client cannot be built.
    pub fn new(
        credential: Credential,
        mut gateway: GatewayClient,
        config: HttpConfig,
    ) -> Result<Payer, PayError> {
        if !credential.enclave_id.is_empty() {
            let key = hex::decode(credential.enclave_id.trim()).map_err(|_| {
                PayError::Usage(format!(
                    "the credential's enclave identity {:?} is not hex",
                    credential.enclave_id
                ))
            })?;
            gateway = gateway.with_identity(&key).map_err(PayError::Client)?;
        }
        let http = http::client(&config)?;
        Ok(Payer { gateway, credential: Arc::new(credential), http, config })
    }

    /// The session credential.
    #[must_use]
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// A clone of the gateway client (answers checked against the credential's enclave
    /// identity, when it records one).
    #[must_use]
    pub fn gateway(&self) -> GatewayClient {
        self.gateway.clone()
    }

    /// Whether the enclave's answers are checked against a pinned identity.
    #[must_use]
    pub fn verifies_answers(&self) -> bool {
        self.gateway.verifies_answers()
    }

    /// The HTTP limits and timeouts in use.
    #[must_use]
    pub fn http_config(&self) -> &HttpConfig {
        &self.config
    }

    /// Fetches `req`, paying within the session's policy if the server asks (the crate docs
    /// give the steps). With `req.options.dry_run`, stops at the 402 and returns it unpaid.
    ///
    /// # Errors
    /// A [`PayError`]: denied, held, over `max_amount`, network, refused by the server, ...
    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchOutcome, PayError> {
        let prepared = self.prepare(&req)?;
        // Bad options are the caller's mistake: refused before anything is sent.
        if let Some(m) = req.options.max_amount.as_deref() {
            MaxAmount::check_syntax(m)?;
            self.max_amount_checkable(m)?;
        }
        let first = self.send(&prepared, None, req.follow_redirects).await?;
        if first.status != StatusCode::PAYMENT_REQUIRED || req.options.dry_run {
            return Ok(outcome(first, None));
        }
        let required = requirement_of(&first)?;
        let idempotency_key =
            req.options.idempotency_key.clone().unwrap_or_else(random_idempotency_key);
        let signed = self.sign_requirement(&required, &req.options, &idempotency_key).await?;
        let version = version_of(&signed);
        let mut details = details(&signed, &idempotency_key);
        let payment = (wire::payment_header_name(version), signed.payment_signature.as_str());

        // The paid retry: the request that got the 402, the same bytes, plus the payment. A lost
        // answer is retried with the identical payment.
        let mut sent = 0u32;
        let answer = loop {
            sent += 1;
            match exchange(&self.http, &self.config, &first.request, Some(payment), req.follow_redirects)
                .await
            {
                Ok(a) => break a,
                Err(HttpFailure::Lost(m)) if sent <= self.config.lost_response_retries => {
                    tracing::warn!(url = %first.request.url, error = %m, "the answer to a paid request was lost; sending it again with the same payment");
                    let pause = self.config.retry_backoff.saturating_mul(1 << (sent - 1).min(6));
                    tokio::time::sleep(pause).await;
                }
                Err(HttpFailure::Lost(m)) => {
                    return Err(PayError::Network {
                        message: format!(
                            "{m} (the paid request to {} was sent {sent} time{}, each with the same payment)",
                            first.request.url,
                            if sent == 1 { "" } else { "s" }
                        ),
                        payment: Some(Box::new(details)),
                    })
                }
                Err(HttpFailure::Fatal(e)) => {
                    return Err(PayError::Other(format!(
                        "{e} (after sending a payment of {} {}; retry with --idempotency-key {} to resend the same payment)",
                        details.charged, details.asset_symbol, details.idempotency_key
                    )))
                }
            }
        };
        let settle = settlement_header(&answer.headers)
            .or(answer.settle_on_redirect.as_ref())
            .and_then(|v| wire::decode_settle_response(v.as_bytes()));
        details.transaction = settle.as_ref().and_then(wire::settle_transaction);
        details.settle_response.clone_from(&settle);
        if answer.status == StatusCode::PAYMENT_REQUIRED {
            let reason = settle
                .as_ref()
                .and_then(|s| {
                    let r = s.get("errorReason").and_then(Value::as_str)?;
                    Some(match s.get("errorMessage").and_then(Value::as_str) {
                        Some(m) if !m.is_empty() => format!("{r}: {m}"),
                        _ => r.to_owned(),
                    })
                })
                .or_else(|| requirement_of(&answer).ok().and_then(|r| r.error().map(str::to_owned)))
                .unwrap_or_else(|| "payment refused".to_owned());
            let status = answer.status.as_u16();
            let response = outcome(answer, None);
            return Err(PayError::ServerRefused {
                status,
                reason,
                settle_response: settle.map(Box::new),
                payment: Box::new(details),
                http_version: response.http_version,
                headers: response.headers,
                body: response.body,
            });
        }
        Ok(outcome(answer, Some(details)))
    }

    /// Fetches `req` without paying and, if the server asks for a payment, reads what it asks
    /// and asks the enclave what it would do (`req.options`: preferences and `max_amount` are
    /// taken into account as [`Self::fetch`] would).
    ///
    /// # Errors
    /// Usage, network, or [`PayError::BadRequirement`] for a 402 that cannot be read.
    pub async fn inspect(&self, req: FetchRequest) -> Result<Inspection, PayError> {
        let options = req.options.clone();
        let outcome = self
            .fetch(FetchRequest { options: PayOptions { dry_run: true, ..options.clone() }, ..req })
            .await?;
        self.inspect_outcome(&outcome, &options).await
    }

    /// What the wallet would do with the answer of a fetch made with `dry_run` (so the request
    /// is made once): for a 402, its requirement read, priced and previewed; otherwise the
    /// status, and no preview.
    ///
    /// # Errors
    /// [`PayError::BadRequirement`] for a 402 that cannot be read; usage or gateway errors.
    pub async fn inspect_outcome(
        &self,
        outcome: &FetchOutcome,
        opts: &PayOptions,
    ) -> Result<Inspection, PayError> {
        if outcome.status != StatusCode::PAYMENT_REQUIRED.as_u16() {
            return Ok(Inspection {
                url: outcome.url.clone(),
                status: outcome.status,
                x402_version: 0,
                error: None,
                accepts: Vec::new(),
                resource: None,
                extensions: None,
                options: Vec::new(),
                preview: None,
                preview_unavailable: Some(format!(
                    "the server answered HTTP {} without asking for a payment",
                    outcome.status
                )),
            });
        }
        let header = outcome
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(wire::PAYMENT_REQUIRED))
            .map(|(_, v)| v.as_bytes());
        let required = wire::read_requirement(header, &outcome.body)?;
        let mut inspection = self.inspect_requirement(&required, opts).await?;
        inspection.url.clone_from(&outcome.url);
        inspection.status = outcome.status;
        Ok(inspection)
    }

    /// What the wallet would do with a requirement handed over directly (JSON, or a
    /// `PAYMENT-REQUIRED` base64 value), paying nothing.
    ///
    /// # Errors
    /// [`PayError::BadRequirement`], [`PayError::Usage`], or a gateway error.
    pub async fn preview(
        &self,
        payment_required: &str,
        opts: &PayOptions,
    ) -> Result<Inspection, PayError> {
        let required = wire::parse_requirement_text(payment_required)?;
        self.inspect_requirement(&required, opts).await
    }

    /// Signs a payment requirement handed over directly — an MCP tool's `PaymentRequired` as
    /// JSON text, or a `PAYMENT-REQUIRED` header value (base64) — within policy and
    /// `opts.max_amount`, and returns the payload, the header and what was paid. The caller
    /// sends it. Retrying with the same `opts.idempotency_key` and the same requirement returns
    /// the same payment, charged once.
    ///
    /// # Errors
    /// As [`Self::fetch`]'s signing step: denied, held, over `max_amount`, ...
    pub async fn sign(
        &self,
        payment_required: &str,
        opts: &PayOptions,
    ) -> Result<SignedPayment, PayError> {
        let required = wire::parse_requirement_text(payment_required)?;
        if opts.dry_run {
            return Err(PayError::Usage(
                "a dry run signs nothing: use preview or inspect".to_owned(),
            ));
        }
        let idempotency_key = opts.idempotency_key.clone().unwrap_or_else(random_idempotency_key);
        let signed = self.sign_requirement(&required, opts, &idempotency_key).await?;
        let version = version_of(&signed);
        let payload = serde_json::from_str(&signed.payment_payload_json).map_err(|e| {
            PayError::Other(format!("the enclave's payment payload is not JSON: {e}"))
        })?;
        let accepted = serde_json::from_str(&signed.accepted_json).unwrap_or(Value::Null);
        Ok(SignedPayment {
            x402_version: version,
            header_name: wire::payment_header_name(version),
            header_value: signed.payment_signature.clone(),
            payload,
            accepted,
            accepted_index: signed.accepted_index,
            details: details(&signed, &idempotency_key),
        })
    }

    fn prepare(&self, req: &FetchRequest) -> Result<Prepared, PayError> {
        Prepared::new(
            &req.method,
            &req.url,
            &req.headers,
            req.body.as_deref(),
            &self.config.user_agent,
        )
    }

    async fn send(
        &self,
        req: &Prepared,
        payment: Option<(&'static str, &str)>,
        follow: bool,
    ) -> Result<Answer, PayError> {
        exchange(&self.http, &self.config, req, payment, follow).await.map_err(|f| match f {
            HttpFailure::Lost(message) => PayError::Network { message, payment: None },
            HttpFailure::Fatal(e) => e,
        })
    }

    /// Refuses `max_amount` when the enclave's answers are not checked against a pinned
    /// identity: the asset registry (the decimals prices are read with) and the signed
    /// payment's amounts would then be the gateway's unverified word, and a hostile host could
    /// make any payment look within the limit. Claiming a limit that cannot be checked is worse
    /// than refusing it.
    fn max_amount_checkable(&self, max_amount: &str) -> Result<(), PayError> {
        if self.gateway.verifies_answers() {
            return Ok(());
        }
        Err(PayError::Usage(format!(
            "--max-amount {:?} cannot be enforced with this credential: it pins no enclave identity (it was issued before signed answers), so the prices and the signed amount would be the gateway's unverified word. Issue a new session (`walletctl session issue`) to pin the enclave's identity, or go without --max-amount (the session's policy and cap still apply)",
            max_amount.trim()
        )))
    }

    /// The enclave's asset registry (an open read; signed by the enclave when the identity is
    /// pinned).
    async fn assets(&self) -> Result<Vec<gw::Asset>, PayError> {
        let mut gateway = self.gateway.clone();
        Ok(gateway
            .list_assets(gw::ListAssetsRequest {})
            .await
            .map_err(PayError::from_client)?
            .assets)
    }

    /// Each option of `required`, priced with the registry, and `max_amount` read with the
    /// registry's units.
    async fn priced(
        &self,
        required: &Requirement,
        max_amount: Option<&str>,
    ) -> Result<(Vec<Priced>, Option<MaxAmount>), PayError> {
        if let Some(m) = max_amount {
            self.max_amount_checkable(m)?;
        }
        let assets = self.assets().await?;
        let max = match max_amount {
            Some(m) => {
                let units: Vec<&str> = assets.iter().map(|a| a.symbol.as_str()).collect();
                Some(MaxAmount::parse(m, &units)?)
            }
            None => None,
        };
        let priced = required.offers().into_iter().map(|o| Priced::new(o, &assets)).collect();
        Ok((priced, max))
    }

    /// What to ask the enclave to sign for under `max`: the requirement as sent, or restricted
    /// to the options within the limit; [`PayError::OverMaxAmount`] when none is.
    fn enclave_value(
        required: &Requirement,
        priced: &[Priced],
        max: Option<&MaxAmount>,
    ) -> Result<String, PayError> {
        let Some(max) = max else { return Ok(required.enclave_value.clone()) };
        match plan(priced, Some(max)) {
            Plan::AsIs => Ok(required.enclave_value.clone()),
            Plan::Only(keep) => Ok(required.restricted_to(&keep)),
            Plan::Over(cheapest) => Err(PayError::OverMaxAmount {
                max_amount: max.text.clone(),
                asked: cheapest.unwrap_or_default(),
                signed_not_sent: false,
            }),
        }
    }

    /// Has the enclave sign `required` (restricted to what fits `max_amount`), retrying a lost
    /// answer with the same idempotency key, and checks the answer against `max_amount`.
    async fn sign_requirement(
        &self,
        required: &Requirement,
        opts: &PayOptions,
        idempotency_key: &str,
    ) -> Result<gw::SignPaymentResponse, PayError> {
        let (value, max) = match opts.max_amount.as_deref() {
            None => (required.enclave_value.clone(), None),
            Some(m) => {
                let (priced, max) = self.priced(required, Some(m)).await?;
                (Self::enclave_value(required, &priced, max.as_ref())?, max)
            }
        };
        let network = opts.network.as_deref().unwrap_or("");
        let asset = opts.asset.as_deref().unwrap_or("");
        let mut attempt = 0;
        let signed = loop {
            attempt += 1;
            let request =
                self.credential.sign_request(&value, network, asset, idempotency_key, now_ms());
            let mut gateway = self.gateway.clone();
            match gateway.sign_payment(request).await {
                Ok(r) => break r,
                Err(e) if attempt < SIGN_ATTEMPTS && transient(&e) => {
                    tokio::time::sleep(self.config.retry_backoff.saturating_mul(attempt)).await;
                }
                Err(e) => return Err(PayError::from_sign(e, idempotency_key)),
            }
        };
        if let Some(max) = &max {
            // The pre-check priced every option the enclave was offered; this catches an
            // option it could not price (a registry changed in between). The enclave has
            // signed it and charged the session's budget; it is not sent, so no money moves.
            if max.allows_human(&signed.charged, &signed.asset_symbol) != Some(true) {
                return Err(PayError::OverMaxAmount {
                    max_amount: max.text.clone(),
                    asked: format!("{} {}", signed.charged, signed.asset_symbol),
                    signed_not_sent: true,
                });
            }
        }
        Ok(signed)
    }

    /// Reads, prices and previews a requirement.
    async fn inspect_requirement(
        &self,
        required: &Requirement,
        opts: &PayOptions,
    ) -> Result<Inspection, PayError> {
        let (priced, max) = self.priced(required, opts.max_amount.as_deref()).await?;
        let options = priced
            .iter()
            .map(|p| OptionSummary {
                index: p.offer.index,
                scheme: p.offer.scheme.clone(),
                network: p.offer.network.clone(),
                asset: p.offer.asset.clone(),
                asset_symbol: p.symbol().map(str::to_owned),
                amount: p.offer.amount.clone(),
                amount_human: p.human(),
                pay_to: p.offer.pay_to.clone(),
                within_max_amount: max.as_ref().and_then(|m| p.within(m)),
            })
            .collect();
        let (preview, preview_unavailable) =
            match Self::enclave_value(required, &priced, max.as_ref()) {
                Err(PayError::OverMaxAmount { max_amount, asked, .. }) => (
                    Some(Preview {
                        allowed: false,
                        would_hold: false,
                        reason: "OVER_MAX_AMOUNT".to_owned(),
                        message: format!(
                        "every option costs more than --max-amount {max_amount} (cheapest: {asked})"
                    ),
                        chosen: None,
                        session_spent: String::new(),
                        session_remaining: String::new(),
                    }),
                    None,
                ),
                Err(e) => return Err(e),
                Ok(value) => self.enclave_preview(&value, opts, max.as_ref()).await?,
            };
        Ok(Inspection {
            url: required
                .resource()
                .and_then(|r| r.get("url"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            status: StatusCode::PAYMENT_REQUIRED.as_u16(),
            x402_version: required.x402_version,
            error: required.error().map(str::to_owned),
            accepts: required.accepts().to_vec(),
            resource: required.resource().cloned(),
            extensions: required.extensions().cloned(),
            options,
            preview,
            preview_unavailable,
        })
    }

    /// Asks the enclave what it would do with `value` (`PreviewPayment`: session-signed, the
    /// same decision as `SignPayment` on the same state, nothing signed or charged), and checks
    /// the chosen option against `max`. An enclave that cannot preview yet (`Unimplemented`)
    /// gives no preview and a sentence saying so.
    async fn enclave_preview(
        &self,
        value: &str,
        opts: &PayOptions,
        max: Option<&MaxAmount>,
    ) -> Result<(Option<Preview>, Option<String>), PayError> {
        let request = self.credential.preview_request(
            value,
            opts.network.as_deref().unwrap_or(""),
            opts.asset.as_deref().unwrap_or(""),
            now_ms(),
        );
        let mut gateway = self.gateway.clone();
        let p = match gateway.preview_payment(request).await {
            Ok(p) => p,
            Err(e) if e.code() == tonic::Code::Unimplemented => {
                return Ok((
                    None,
                    Some(format!(
                        "this gateway or enclave cannot preview the policy decision ({e}); the options are shown as the server sent them"
                    )),
                ))
            }
            // A requirement the enclave cannot read, or a session it does not accept: what
            // SignPayment would answer, as a refusal.
            Err(e) if e.reason_code().is_some() && !e.is_untrusted() && !e.is_connection_lost() => {
                return Ok((
                    Some(Preview {
                        allowed: false,
                        would_hold: false,
                        reason: e.reason_code().unwrap_or_default().to_owned(),
                        message: e.message().to_owned(),
                        chosen: None,
                        session_spent: String::new(),
                        session_remaining: String::new(),
                    }),
                    None,
                ))
            }
            Err(e) => return Err(PayError::from_client(e)),
        };
        let chosen = (p.outcome != "denied").then(|| ChosenOption {
            index: p.accepted_index,
            network: p.network.clone(),
            asset: p.asset.clone(),
            asset_symbol: p.asset_symbol.clone(),
            pay_to: p.pay_to.clone(),
            amount: p.amount.clone(),
            charged: p.amount_human.clone(),
        });
        let mut preview = Preview {
            allowed: p.outcome == "allowed",
            would_hold: p.outcome == "held",
            reason: p.reason,
            message: p.message,
            chosen,
            session_spent: p.session_spent,
            session_remaining: p.session_remaining,
        };
        if let (Some(max), Some(c)) = (max, &preview.chosen) {
            if max.allows_human(&c.charged, &c.asset_symbol) != Some(true) {
                preview.allowed = false;
                preview.would_hold = false;
                preview.reason = "OVER_MAX_AMOUNT".to_owned();
                preview.message = format!(
                    "the option the wallet would pay costs {} {}, more than --max-amount {}",
                    c.charged, c.asset_symbol, max.text
                );
            }
        }
        Ok((Some(preview), None))
    }
}

/// The requirement of a 402 answer.
fn requirement_of(answer: &Answer) -> Result<Requirement, PayError> {
    wire::read_requirement(
        answer.headers.get(wire::PAYMENT_REQUIRED).map(reqwest::header::HeaderValue::as_bytes),
        &answer.body,
    )
}

/// The x402 version of a signed payment (0 from older enclaves means 2).
fn version_of(r: &gw::SignPaymentResponse) -> u32 {
    if r.x402_version == 0 {
        2
    } else {
        r.x402_version
    }
}

fn details(r: &gw::SignPaymentResponse, idempotency_key: &str) -> PaymentDetails {
    PaymentDetails {
        x402_version: version_of(r),
        amount: r.amount.clone(),
        charged: r.charged.clone(),
        asset: r.asset.clone(),
        asset_symbol: r.asset_symbol.clone(),
        network: r.network.clone(),
        pay_to: r.pay_to.clone(),
        payer: r.payer.clone(),
        transaction: None,
        settle_response: None,
        idempotency_key: idempotency_key.to_owned(),
        replayed: r.replayed,
        session_spent: r.session_spent.clone(),
        session_remaining: r.session_remaining.clone(),
    }
}

fn outcome(a: Answer, payment: Option<PaymentDetails>) -> FetchOutcome {
    FetchOutcome {
        url: a.request.url.to_string(),
        status: a.status.as_u16(),
        http_version: format!("{:?}", a.version),
        headers: a
            .headers
            .iter()
            .map(|(k, v)| {
                (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .collect(),
        body: a.body,
        payment,
    }
}
