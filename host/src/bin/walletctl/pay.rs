//! `walletctl pay`: the agent's command. On stdin, what the server asked for: an x402 v2
//! `PAYMENT-REQUIRED` value (base64; a `PAYMENT-REQUIRED:` prefix is ignored) or an x402 v1 402
//! JSON body (anything starting with `{`). On stdout, exactly the header value to send back:
//! `PAYMENT-SIGNATURE` for v2, `X-PAYMENT` for v1 (`-v` says which on stderr).

use std::{io::Read as _, path::PathBuf};

use clap::Args;
use wallet_client::{clean_header_input, now_ms, random_idempotency_key, Credential, Reason};
use wallet_policy::{
    address::parse_address,
    x402::{caip2_network, payment_header_name, MAX_HEADER_LEN},
};

use crate::{client, Fail, Out};

#[derive(Debug, Args)]
pub(crate) struct PayArgs {
    /// Session credential file.
    #[arg(long, env = "WALLET_SESSION")]
    session: PathBuf,
    /// Reuse on retries: the same key and header return the same signature, charged once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Pay only an option on this network: a CAIP-2 id (eip155:84532) or an x402 v1 name
    /// (base-sepolia). When the server offers none, nothing is paid (PREFERENCE_NOT_OFFERED).
    #[arg(long, default_value = "")]
    network: String,
    /// Pay only an option in this token (its contract address, 0x…). When the server offers
    /// none, nothing is paid (PREFERENCE_NOT_OFFERED).
    #[arg(long, default_value = "")]
    asset: String,
    /// Also print what was paid, and which header to send the value in, to stderr.
    #[arg(long, short)]
    verbose: bool,
}

/// The network preference as sent to the enclave: a CAIP-2 id (a v1 name mapped by the official
/// table), or empty for none. The enclave checks it again; this is for a clear message early.
fn preferred_network(network: &str) -> Result<String, Fail> {
    if network.is_empty() {
        return Ok(String::new());
    }
    caip2_network(network).map_err(|e| Fail(2, format!("invalid: --network: {e}")))
}

/// The asset preference, checked as the enclave will check it (`0x` + 40 hex, EIP-55 checksum
/// when mixed case).
fn preferred_asset(asset: &str) -> Result<String, Fail> {
    if !asset.is_empty() {
        parse_address(asset).map_err(|e| Fail(2, format!("invalid: --asset: {e}")))?;
    }
    Ok(asset.to_owned())
}

/// Signs the payment on stdin with the session key and prints the header value to send back
/// (`PAYMENT-SIGNATURE` for x402 v2, `X-PAYMENT` for v1).
pub(crate) async fn run(default_url: &str, a: PayArgs) -> Out {
    let network = preferred_network(&a.network)?;
    let asset = preferred_asset(&a.asset)?;
    let cred = Credential::read(&a.session).map_err(|e| Fail(2, e))?;
    let mut input = String::new();
    std::io::stdin()
        .take((MAX_HEADER_LEN as u64) * 2 + 1)
        .read_to_string(&mut input)
        .map_err(|e| Fail(2, format!("invalid: cannot read stdin: {e}")))?;
    let header = clean_header_input(&input);
    if header.is_empty() {
        return Err(Fail(
            2,
            "invalid: nothing on stdin: expected a PAYMENT-REQUIRED value (x402 v2) or a 402 JSON body (x402 v1)".into(),
        ));
    }
    if header.len() > MAX_HEADER_LEN {
        return Err(Fail(2, format!("invalid: HEADER_TOO_LARGE: the payment requirements on stdin are larger than {MAX_HEADER_LEN} bytes")));
    }
    let idem = a.idempotency_key.unwrap_or_else(random_idempotency_key);
    let url = crate::agent_gateway(default_url, &cred.gateway)?;
    let req = cred.sign_request(header, &network, &asset, &idem, now_ms());
    let mut cl = client(&url).await?;
    if cred.enclave_id.is_empty() {
        if !cl.verifies_answers() {
            eprintln!("walletctl: warning: this credential does not pin the enclave's identity (issued before signed answers), so the answer cannot be checked; issue a new session to pin it");
        }
    } else {
        cl = crate::with_identity(cl, &cred.enclave_id)?;
    }
    let resp = match cl.sign_payment(req).await {
        Ok(r) => r,
        Err(e) if e.reason() == Some(Reason::ApprovalPending) => {
            return Err(Fail(
                e.exit_code(),
                format!(
                    "pending: {}\nretry once approved with: --idempotency-key {idem}",
                    e.message()
                ),
            ));
        }
        Err(e) if e.outcome_unknown() => {
            return Err(Fail(
                e.exit_code(),
                format!(
                    "{e}\nthe payment may have been signed: retry with --idempotency-key {idem} to get the same payment (never charged twice)"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", resp.payment_signature);
    if a.verbose {
        // 0: an enclave from before x402 v1 support, which signs v2 only.
        let version = if resp.x402_version == 0 { 2 } else { resp.x402_version };
        eprintln!(
            "send it in the {} header (x402 v{version})",
            payment_header_name(u64::from(version))
        );
        eprintln!(
            "paid {} {} to {} on {} from {} (session spent {}, {} left){}",
            resp.charged,
            resp.asset_symbol,
            resp.pay_to,
            resp.network,
            resp.payer,
            resp.session_spent,
            resp.session_remaining,
            if resp.replayed { " [idempotent replay, not charged again]" } else { "" }
        );
    }
    Ok(())
}
