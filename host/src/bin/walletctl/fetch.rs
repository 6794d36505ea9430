//! `walletctl fetch URL`: a paying curl (wallet-agent). The request is made as curl would; when
//! the server answers `402 Payment Required` (x402 v2 or v1), the enclave signs a payment within
//! the session's policy and the same request is sent again with it.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use clap::Args;
use serde_json::{json, Value};
use wallet_agent::{
    exit, FetchOutcome, FetchRequest, HttpConfig, Inspection, PayError, PayOptions, Payer,
    PaymentDetails,
};
use wallet_client::Credential;

use crate::{Fail, Out};

const AFTER_HELP: &str = "\
Examples:
  walletctl fetch --session agent.json https://api.example.com/premium-data
  walletctl fetch -X POST --json '{\"q\":\"weather\"}' --max-amount 0.05 https://api.example.com/ask
  walletctl fetch -d @query.json -H 'Content-Type: application/json' -o answer.json URL
  walletctl fetch --dry-run URL            what would be paid, and whether the policy allows it
  walletctl fetch --output json URL | jq .payment.transaction
  walletctl fetch --idempotency-key pay_0123... URL   retry after a hold was approved, or after
                                                      a lost answer: same payment, charged once

The response body goes to stdout (or -o FILE) byte for byte, whatever the HTTP status, as curl
does; what was paid is on stderr with -v, and in the JSON with --output json. x402 v2
(PAYMENT-REQUIRED header -> PAYMENT-SIGNATURE) and v1 (402 JSON body -> X-PAYMENT) are both
handled; the paid retry sends the same method, headers and body. If its answer is lost, the
identical payment is sent again (never a second charge); a 402 to the paid request means the
server refused the payment, and nothing is paid again.

Redirects (-L) to another origin (scheme, host or port) carry only the Accept, Accept-Language,
Content-Type and User-Agent headers: Authorization, Cookie, X-Api-Key and every other -H
header stay with the origin they were given for, and the payment header is only ever sent to
the origin that asked for it. A redirect that would send the request body to another origin
(307/308) is not followed: it is the answer, as without -L.

--max-amount is checked against the enclave's signed answers (the asset registry and the
signed amount), so it needs a session credential that pins the enclave's identity; with an
older credential that pins none it is refused (exit 2): issue a new session.

Exit codes:
  0  the request was made (paid or not; any HTTP status)
  1  other error (a 402 that is not an x402 requirement, the gateway unreachable)
  2  usage (bad flag, URL, header, amount or file; unreadable session file)
  3  denied by the wallet's policy (reason code on stderr)
  4  the session was not accepted (revoked, expired, unknown)
  5  the gateway's answer is not signed by the pinned enclave: do not trust this host
  6  held for a human's approval: once approved, retry with the printed --idempotency-key
  7  over --max-amount: refused before signing, nothing charged (in the rare case the enclave
     chose an option that could not be priced beforehand, it was signed, so the session's
     budget was charged, but it was NOT sent: no money moved; the message says which)
  8  network error talking to the server (if a payment was sent: retry with the printed
     --idempotency-key, the same payment is resent, never charged twice)
  9  the server refused the payment (it answered 402 again); not paid again
With --dry-run: 0 would pay (or nothing asked), 3 would be denied, 4 session not accepted,
6 would be held, 7 over --max-amount.";

/// How `walletctl fetch` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FetchOutput {
    /// The body as is (curl).
    #[default]
    Text,
    /// One JSON object: status, headers, body (text, or base64 when not UTF-8) and the payment
    /// (amount, asset, network, payee, payer, settlement transaction); errors too.
    Json,
}

/// `walletctl fetch` arguments.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 ok, 1 other, 2 usage, 3 denied by policy, 4 session not accepted, 5 untrusted gateway, 6 held for approval, 7 over --max-amount, 8 network error, 9 server refused the payment. --help has examples and details.",
    after_long_help = AFTER_HELP
)]
pub(crate) struct FetchArgs {
    /// The URL to fetch (http or https).
    url: String,
    /// Session credential file.
    #[arg(long, env = "WALLET_SESSION")]
    session: PathBuf,
    /// HTTP method [default: GET, or POST with -d/--json].
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,
    /// Request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Request body: text, @FILE or @- (stdin), sent byte for byte (also on the paid retry).
    #[arg(short = 'd', long = "data", value_name = "DATA", conflicts_with = "json")]
    data: Option<String>,
    /// JSON body (text, @FILE or @-); sets Content-Type and Accept to application/json.
    #[arg(long, value_name = "JSON")]
    json: Option<String>,
    /// Write the body to FILE instead of stdout.
    #[arg(short = 'o', long = "out-file", value_name = "FILE")]
    out_file: Option<PathBuf>,
    /// Include the status line and response headers in the output.
    #[arg(short = 'i', long)]
    include: bool,
    /// Say on stderr what was asked and what was paid (amount, payee, network, settlement).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Follow redirects. To another origin only Accept, Accept-Language, Content-Type and
    /// User-Agent are sent (never the payment, Authorization, Cookie or custom headers), and a
    /// redirect that would carry the body there is not followed.
    #[arg(short = 'L', long = "location")]
    location: bool,
    /// The most to pay for this request: 0.05, "0.05 USDC" or $0.05. Checked before signing
    /// (needs a session credential that pins the enclave's identity).
    #[arg(long, value_name = "AMOUNT", env = "WALLET_MAX_AMOUNT")]
    max_amount: Option<String>,
    /// Pay only an option on this network: a CAIP-2 id (eip155:84532) or an x402 v1 name
    /// (base-sepolia). When the server offers none, nothing is paid (PREFERENCE_NOT_OFFERED).
    #[arg(long)]
    network: Option<String>,
    /// Pay only an option in this token (its contract address). When the server offers none,
    /// nothing is paid (PREFERENCE_NOT_OFFERED).
    #[arg(long)]
    asset: Option<String>,
    /// Idempotency key: the same key and the same 402 return the same payment, charged once.
    /// Reuse it to retry after a hold was approved or an answer was lost.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Show what would be paid and whether the policy allows it; pay nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FetchOutput::Text)]
    output: FetchOutput,
    /// Give up on one exchange with the server after this many seconds.
    #[arg(short = 'm', long = "max-time", value_name = "SECONDS", default_value_t = 60)]
    max_time: u64,
    /// Give up connecting to the server after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    connect_timeout: u64,
}

/// Runs `walletctl fetch`.
pub(crate) async fn run(default_url: &str, a: FetchArgs) -> Out {
    let json_out = a.output == FetchOutput::Json;
    match fetch(default_url, &a).await {
        Ok(()) => Ok(()),
        Err(Failure::Usage(m)) => {
            if json_out {
                print_json(
                    &json!({"ok": false, "exit_code": exit::USAGE, "reason": "USAGE", "message": m}),
                );
            }
            Err(Fail(exit::USAGE, format!("usage: {m}")))
        }
        Err(Failure::Pay(e)) => {
            if json_out {
                print_json(&error_json(&e));
            } else if let PayError::ServerRefused { status, http_version, headers, body, .. } = &e {
                // As curl would: the server's answer is the output (with -i, its status line
                // and headers), the reason on stderr.
                let mut out = Vec::new();
                if a.include {
                    out.extend_from_slice(&head(http_version, *status, headers));
                }
                out.extend_from_slice(body);
                let _ = write_body(a.out_file.as_ref(), &out);
            }
            Err(Fail(e.exit_code(), e.to_string()))
        }
        Err(Failure::Exit(code, m)) => Err(Fail(code, m)),
    }
}

enum Failure {
    Usage(String),
    Pay(PayError),
    Exit(u8, String),
}

impl From<PayError> for Failure {
    fn from(e: PayError) -> Self {
        match e {
            PayError::Usage(m) => Failure::Usage(m),
            e => Failure::Pay(e),
        }
    }
}

async fn fetch(default_url: &str, a: &FetchArgs) -> Result<(), Failure> {
    let cred = Credential::read(&a.session).map_err(Failure::Usage)?;
    let (body, json_body) = match (&a.data, &a.json) {
        (Some(d), _) => (Some(read_data(d)?), false),
        (None, Some(j)) => (Some(read_data(j)?), true),
        (None, None) => (None, false),
    };
    let mut headers = a.headers.iter().map(|h| parse_header(h)).collect::<Result<Vec<_>, _>>()?;
    if json_body {
        for name in ["Content-Type", "Accept"] {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                headers.push((name.to_owned(), "application/json".to_owned()));
            }
        }
    }
    let options = PayOptions {
        max_amount: a.max_amount.clone().filter(|m| !m.trim().is_empty()),
        network: a.network.clone().filter(|n| !n.is_empty()),
        asset: a.asset.clone().filter(|n| !n.is_empty()),
        idempotency_key: a.idempotency_key.clone(),
        dry_run: a.dry_run,
    };
    let req = FetchRequest {
        method: a.method.clone().unwrap_or_default(),
        url: a.url.clone(),
        headers,
        body,
        options: options.clone(),
        follow_redirects: a.location,
    };
    let payer = payer(default_url, cred, a).await?;
    if a.dry_run {
        return dry_run(&payer, req, &options, a).await;
    }
    let outcome = payer.fetch(req).await?;
    if a.verbose {
        verbose(&outcome);
    }
    print_outcome(&outcome, a)
}

/// Connects the payer: the gateway from `--gateway`/`WALLET_GATEWAY` when given, else the one
/// in the credential; answers checked against the enclave identity the credential pins, else
/// the one pinned in walletctl's home.
async fn payer(default_url: &str, cred: Credential, a: &FetchArgs) -> Result<Payer, Failure> {
    let url = crate::agent_gateway(default_url, &cred.gateway)
        .map_err(|Fail(c, m)| Failure::Exit(c, m))?;
    let gateway = crate::client(&url).await.map_err(|Fail(c, m)| Failure::Exit(c, m))?;
    if cred.enclave_id.is_empty() && !gateway.verifies_answers() {
        eprintln!("walletctl: warning: this credential does not pin the enclave's identity (issued before signed answers), so the answer cannot be checked; issue a new session to pin it");
    }
    let config = HttpConfig {
        timeout: Duration::from_secs(a.max_time.max(1)),
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        ..HttpConfig::default()
    };
    Ok(Payer::new(cred, gateway, config)?)
}

/// `--dry-run`: the request is made once, unpaid; a 402 is read, priced and previewed.
async fn dry_run(
    payer: &Payer,
    req: FetchRequest,
    options: &PayOptions,
    a: &FetchArgs,
) -> Result<(), Failure> {
    let outcome = payer.fetch(req).await?;
    if outcome.status != 402 {
        eprintln!(
            "walletctl: dry run: the server asked for no payment (HTTP {}); nothing was paid",
            outcome.status
        );
        return print_outcome(&outcome, a);
    }
    let inspection = payer.inspect_outcome(&outcome, options).await?;
    let code = dry_run_exit(&inspection);
    if a.output == FetchOutput::Json {
        let mut v = serde_json::to_value(&inspection).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("dry_run".into(), Value::Bool(true));
            m.insert("exit_code".into(), json!(code));
        }
        print_json(&v);
    } else {
        print_lines(&inspection_text(&inspection, options));
    }
    if code == exit::OK {
        Ok(())
    } else {
        let p = inspection.preview.as_ref();
        Err(Failure::Exit(
            code,
            format!(
                "dry run: {}{}",
                p.map(|p| p.reason.as_str()).unwrap_or_default(),
                p.map(|p| format!(": {}", p.message)).unwrap_or_default()
            ),
        ))
    }
}

/// The exit code a dry run predicts for the real fetch.
fn dry_run_exit(i: &Inspection) -> u8 {
    let Some(p) = &i.preview else { return exit::OK };
    if p.allowed {
        return exit::OK;
    }
    if p.would_hold {
        return exit::HELD;
    }
    match p.reason.as_str() {
        "OVER_MAX_AMOUNT" => exit::OVER_MAX_AMOUNT,
        "SESSION_REVOKED" | "SESSION_EXPIRED" | "UNKNOWN_SESSION" | "BAD_SIGNATURE"
        | "STALE_REQUEST" | "REPLAYED_REQUEST" => exit::SESSION,
        _ => exit::DENIED,
    }
}

/// A dry run for people.
fn inspection_text(i: &Inspection, options: &PayOptions) -> Vec<String> {
    let mut out = vec![format!(
        "dry run: nothing was paid. {} answered 402 (x402 v{}){}",
        i.url,
        i.x402_version,
        i.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    )];
    out.push("the server offers:".to_owned());
    for o in &i.options {
        let price = match (&o.amount_human, &o.asset_symbol) {
            (Some(h), Some(s)) => format!("{h} {s}"),
            _ => format!("{} atomic units of {} (not in the registry)", o.amount, o.asset),
        };
        let fits = match (o.within_max_amount, &options.max_amount) {
            (Some(true), Some(m)) => format!(" (within --max-amount {m})"),
            (Some(false), Some(m)) => format!(" (over --max-amount {m})"),
            _ => String::new(),
        };
        out.push(format!(
            "  [{}] {} {price} on {} to {}{fits}",
            o.index, o.scheme, o.network, o.pay_to
        ));
    }
    match (&i.preview, &i.preview_unavailable) {
        (Some(p), _) => {
            let what = p.chosen.as_ref().map(|c| {
                format!(
                    "{} {} on {} to {} (option {})",
                    c.charged, c.asset_symbol, c.network, c.pay_to, c.index
                )
            });
            if p.allowed {
                out.push(format!(
                    "the wallet would pay {}; the session would have spent {}, {} left",
                    what.unwrap_or_default(),
                    p.session_spent,
                    p.session_remaining
                ));
            } else if p.would_hold {
                out.push(format!(
                    "the wallet would hold {} for a human's approval: {}",
                    what.unwrap_or_default(),
                    p.message
                ));
            } else {
                out.push(format!("the wallet would refuse: {}: {}", p.reason, p.message));
            }
        }
        (None, Some(why)) => out.push(format!("no policy preview: {why}")),
        (None, None) => {}
    }
    out
}

/// `-v`: what was asked and paid, on stderr.
fn verbose(o: &FetchOutcome) {
    match &o.payment {
        None => eprintln!("walletctl: {} answered HTTP {}; nothing was paid", o.url, o.status),
        Some(p) => {
            eprintln!(
                "walletctl: paid {} {} ({} atomic) to {} on {} from {} (x402 v{}, idempotency key {}; session spent {}, {} left){}",
                p.charged,
                p.asset_symbol,
                p.amount,
                p.pay_to,
                p.network,
                p.payer,
                p.x402_version,
                p.idempotency_key,
                p.session_spent,
                p.session_remaining,
                if p.replayed { " [the same payment as before, not charged again]" } else { "" }
            );
            match (&p.transaction, &p.settle_response) {
                (Some(tx), _) => eprintln!("walletctl: settled in transaction {tx}"),
                (None, Some(s)) => {
                    eprintln!("walletctl: settlement response without a transaction: {s}")
                }
                (None, None) => eprintln!("walletctl: the server sent no settlement response"),
            }
            eprintln!("walletctl: {} answered HTTP {}", o.url, o.status);
        }
    }
}

/// The response: body (and with -i the head) to stdout or -o FILE; or one JSON object.
fn print_outcome(o: &FetchOutcome, a: &FetchArgs) -> Result<(), Failure> {
    if a.output == FetchOutput::Json {
        let mut v = json!({
            "ok": true,
            "url": o.url,
            "status": o.status,
            "headers": headers_json(&o.headers),
            "paid": o.payment.is_some(),
            "payment": o.payment.as_ref().map(payment_json),
        });
        if let Some(path) = &a.out_file {
            write_body(Some(path), &o.body)?;
            v["body_file"] = json!(path.display().to_string());
        } else {
            body_json(&mut v, &o.body);
        }
        print_json(&v);
        return Ok(());
    }
    let mut out = Vec::new();
    if a.include {
        out.extend_from_slice(&head(&o.http_version, o.status, &o.headers));
    }
    out.extend_from_slice(&o.body);
    write_body(a.out_file.as_ref(), &out)
}

/// The status line and headers as `-i` shows them (curl's form), ending with the blank line.
fn head(http_version: &str, status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("{http_version} {status} {}\r\n", reqwest_reason(status)).into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The canonical reason phrase of a status.
fn reqwest_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes `bytes` to `path`, or to stdout (a closed pipe is not an error).
fn write_body(path: Option<&PathBuf>, bytes: &[u8]) -> Result<(), Failure> {
    match path {
        Some(p) => std::fs::write(p, bytes)
            .map_err(|e| Failure::Exit(exit::OTHER, format!("cannot write {}: {e}", p.display()))),
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes).and_then(|()| out.flush());
            Ok(())
        }
    }
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into()));
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
}

/// Headers as a JSON object, lower-case names; repeated headers joined with ", ".
fn headers_json(headers: &[(String, String)]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        match m.get_mut(&k) {
            Some(Value::String(s)) => {
                s.push_str(", ");
                s.push_str(v);
            }
            _ => {
                m.insert(k, Value::String(v.clone()));
            }
        }
    }
    Value::Object(m)
}

/// `body` (UTF-8 text) or `body_base64`.
fn body_json(v: &mut Value, body: &[u8]) {
    if let Value::Object(m) = v {
        m.extend(wallet_agent::body_fields(body));
    }
}

fn payment_json(p: &PaymentDetails) -> Value {
    serde_json::to_value(p).unwrap_or(Value::Null)
}

/// A failure as one JSON object on stdout (the sentence is on stderr as well).
fn error_json(e: &PayError) -> Value {
    let mut v = json!({
        "ok": false,
        "exit_code": e.exit_code(),
        "reason": e.reason_code(),
        "message": e.to_string(),
        "payment": e.payment().map(payment_json),
    });
    match e {
        PayError::Held { approval_id, idempotency_key, .. } => {
            v["approval_id"] = json!(approval_id);
            v["idempotency_key"] = json!(idempotency_key);
        }
        PayError::OutcomeUnknown { idempotency_key, .. } => {
            v["idempotency_key"] = json!(idempotency_key);
        }
        PayError::Network { payment: Some(p), .. } => {
            v["idempotency_key"] = json!(p.idempotency_key);
        }
        PayError::ServerRefused { status, reason, settle_response, body, .. } => {
            v["status"] = json!(status);
            v["server_reason"] = json!(reason);
            v["settle_response"] = settle_response.as_deref().cloned().unwrap_or(Value::Null);
            body_json(&mut v, body);
        }
        PayError::OverMaxAmount { max_amount, asked, signed_not_sent } => {
            v["max_amount"] = json!(max_amount);
            v["asked"] = json!(asked);
            v["signed_not_sent"] = json!(signed_not_sent);
        }
        _ => {}
    }
    v
}

/// `-d`/`--json` data: the text, or the bytes of @FILE, or of @- (stdin).
fn read_data(d: &str) -> Result<Vec<u8>, Failure> {
    match d.strip_prefix('@') {
        Some("-") => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| Failure::Usage(format!("cannot read the body from stdin: {e}")))?;
            Ok(b)
        }
        Some(path) => std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("cannot read the body from {path}: {e}"))),
        None => Ok(d.as_bytes().to_vec()),
    }
}

/// `Name: value` (an empty value is allowed: `Name:`).
fn parse_header(h: &str) -> Result<(String, String), Failure> {
    match h.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_owned(), v.trim().to_owned())),
        _ => Err(Failure::Usage(format!("header {h:?} is not \"Name: value\""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_data_read_like_curl() {
        assert!(
            matches!(parse_header("Accept: text/plain"), Ok((n, v)) if n == "Accept" && v == "text/plain")
        );
        assert!(matches!(parse_header("X-Empty:"), Ok((n, v)) if n == "X-Empty" && v.is_empty()));
        assert!(matches!(parse_header("no colon"), Err(Failure::Usage(_))));
        assert!(matches!(parse_header(": v"), Err(Failure::Usage(_))));
        assert_eq!(read_data("a=b").ok(), Some(b"a=b".to_vec()));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("body.bin");
        std::fs::write(&f, [0u8, 159, 146, 150, b'\n']).unwrap();
        assert_eq!(
            read_data(&format!("@{}", f.display())).ok(),
            Some(vec![0, 159, 146, 150, b'\n'])
        );
        assert!(matches!(read_data("@/nonexistent/x"), Err(Failure::Usage(_))));
    }

    #[test]
    fn json_output_is_binary_safe() {
        let mut v = json!({});
        body_json(&mut v, b"hello");
        assert_eq!(v["body"], "hello");
        let mut v = json!({});
        body_json(&mut v, &[0xff, 0x00]);
        assert_eq!((v["body"].clone(), v["body_base64"].clone()), (Value::Null, json!("/wA=")));
        let h = headers_json(&[
            ("Set-Cookie".into(), "a=1".into()),
            ("set-cookie".into(), "b=2".into()),
        ]);
        assert_eq!(h["set-cookie"], "a=1, b=2");
    }

    #[test]
    fn dry_run_exit_codes_predict_the_fetch() {
        let mut i = Inspection {
            url: String::new(),
            status: 402,
            x402_version: 2,
            error: None,
            accepts: vec![],
            resource: None,
            extensions: None,
            options: vec![],
            preview: None,
            preview_unavailable: Some("x".into()),
        };
        assert_eq!(dry_run_exit(&i), 0);
        let p = |allowed, would_hold, reason: &str| wallet_agent::Preview {
            allowed,
            would_hold,
            reason: reason.into(),
            message: String::new(),
            chosen: None,
            session_spent: String::new(),
            session_remaining: String::new(),
        };
        for (preview, code) in [
            (p(true, false, ""), 0),
            (p(false, true, "APPROVAL_PENDING"), 6),
            (p(false, false, "PER_TX_LIMIT"), 3),
            (p(false, false, "OVER_MAX_AMOUNT"), 7),
            (p(false, false, "SESSION_REVOKED"), 4),
        ] {
            i.preview = Some(preview);
            assert_eq!(dry_run_exit(&i), code);
        }
    }
}
