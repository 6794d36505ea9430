//! `walletctl pay`: the agent's command (PAYMENT-REQUIRED on stdin, PAYMENT-SIGNATURE out).

use std::{io::Read as _, path::PathBuf};

use clap::Args;
use wallet_client::{
    clean_header_input, now_ms, random_idempotency_key, ClientError, Credential, Reason,
};
use wallet_policy::x402::MAX_HEADER_LEN;

use crate::{client, Fail, Out};

#[derive(Debug, Args)]
pub(crate) struct PayArgs {
    /// Session credential file.
    #[arg(long, env = "WALLET_SESSION")]
    session: PathBuf,
    /// Reuse on retries: the same key and header return the same signature, charged once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Prefer this network among the server's options.
    #[arg(long, default_value = "")]
    network: String,
    /// Prefer this token address among the server's options.
    #[arg(long, default_value = "")]
    asset: String,
    /// Also print what was paid (to stderr).
    #[arg(long, short)]
    verbose: bool,
}

/// Signs the payment on stdin with the session key and prints the PAYMENT-SIGNATURE value.
pub(crate) async fn run(default_url: &str, a: PayArgs) -> Out {
    let cred = Credential::read(&a.session).map_err(|e| Fail(2, e))?;
    let mut input = String::new();
    std::io::stdin()
        .take((MAX_HEADER_LEN as u64) * 2 + 1)
        .read_to_string(&mut input)
        .map_err(|e| Fail(2, format!("invalid: cannot read stdin: {e}")))?;
    let header = clean_header_input(&input);
    if header.is_empty() {
        return Err(Fail(2, "invalid: no PAYMENT-REQUIRED value on stdin".into()));
    }
    if header.len() > MAX_HEADER_LEN {
        return Err(Fail(2, format!("invalid: HEADER_TOO_LARGE: the PAYMENT-REQUIRED value is larger than {MAX_HEADER_LEN} bytes")));
    }
    let idem = a.idempotency_key.unwrap_or_else(random_idempotency_key);
    // The gateway flag/env wins over the one recorded in the credential only when set explicitly.
    let url =
        if std::env::var_os("WALLET_GATEWAY").is_some() || default_url != "http://127.0.0.1:7402" {
            default_url.to_owned()
        } else {
            cred.gateway.clone()
        };
    let req = cred.sign_request(header, &a.network, &a.asset, &idem, now_ms());
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
        Err(e) if outcome_unknown(&e) => {
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

/// Whether the request may have reached the enclave and been signed without its answer coming
/// back (so only a retry with the same idempotency key is safe): the answer was lost, the
/// enclave said the attempt is still in flight, or the error is not the enclave's signed word
/// (a gateway can turn a signed payment into a made-up denial to get it paid twice).
fn outcome_unknown(e: &ClientError) -> bool {
    use tonic::Code;
    !e.is_connect()
        && (!e.is_enclave_signed()
            || matches!(
                e.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::Internal
            )
            || e.reason() == Some(Reason::IdempotencyInProgress))
}
