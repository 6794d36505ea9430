//! SigV4 checking (and signing, for tests and setup) of JSON 1.1 requests: `POST /`, no query.
//!
//! An implementation separate from the enclave's (`wallet-enclave`'s `platform::kms::sigv4`),
//! so that each checks the other; both are tested against AWS's published test suite.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

/// How far a request's `X-Amz-Date` may be from the sim's clock, milliseconds (AWS: 15 min).
pub const MAX_SKEW_MS: u64 = 15 * 60 * 1000;

/// Why a signature was refused: `(KMS error type, message)`, as AWS words them.
pub type Refusal = (&'static str, String);

/// The credentials requests must be signed with.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: zeroize::Zeroizing<String>,
    /// Session token, when the credentials are temporary; then every request must carry it.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The hex signature of a request: `headers` are the signed ones, (lower-case name, value).
fn signature(
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
    method: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> String {
    let mut sorted: Vec<(String, String)> = Vec::new();
    for (n, v) in headers {
        let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
        match sorted.iter_mut().find(|(m, _)| m == n) {
            Some((_, w)) => {
                w.push(',');
                w.push_str(&v);
            }
            None => sorted.push((n.clone(), v)),
        }
    }
    sorted.sort();
    let signed: Vec<&str> = sorted.iter().map(|(n, _)| n.as_str()).collect();
    let canonical_headers: String = sorted.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let creq = format!(
        "{method}\n/\n\n{canonical_headers}\n{}\n{}",
        signed.join(";"),
        hex::encode(Sha256::digest(body))
    );
    let date = amz_date.get(..8).unwrap_or_default();
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(creq.as_bytes()))
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    hex::encode(hmac(&k, sts.as_bytes()))
}

/// Signs a KMS request: returns every header to send (with `Authorization`).
#[must_use]
pub fn sign(
    creds: &Credentials,
    region: &str,
    host: &str,
    amz_date: &str,
    target: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
        ("host".to_owned(), host.to_owned()),
        ("x-amz-date".to_owned(), amz_date.to_owned()),
        ("x-amz-target".to_owned(), target.to_owned()),
    ];
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".to_owned(), t.clone()));
    }
    let mut names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let sig = signature(&creds.secret_access_key, amz_date, region, "kms", "POST", &headers, body);
    let date = &amz_date[..8];
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{date}/{region}/kms/aws4_request, SignedHeaders={}, Signature={sig}",
        creds.access_key_id,
        names.join(";")
    );
    headers.push(("authorization".to_owned(), auth));
    headers
}

/// Unix milliseconds of an `X-Amz-Date` (`YYYYMMDD'T'HHMMSS'Z'`).
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (H. Hinnant).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

/// `YYYYMMDD'T'HHMMSS'Z'` for Unix milliseconds.
#[must_use]
pub fn amz_date(now_ms: u64) -> String {
    let secs = now_ms / 1000;
    let z = secs / 86_400 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    let rem = secs % 86_400;
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Checks a request's SigV4 `Authorization` against `creds` for `region`, service `kms`, at
/// `now_ms`. `headers` are the request's, names in any case.
///
/// # Errors
/// The KMS error type and message: `MissingAuthenticationTokenException` (no header),
/// `IncompleteSignatureException` (malformed), `UnrecognizedClientException` (another access
/// key or session token), `InvalidSignatureException` (wrong scope, date, skew or signature).
pub fn verify(
    creds: &Credentials,
    region: &str,
    now_ms: u64,
    method: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), Refusal> {
    let get = |name: &str| {
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    };
    let incomplete = |m: &str| ("IncompleteSignatureException", m.to_owned());
    let invalid = |m: &str| ("InvalidSignatureException", m.to_owned());
    let auth = get("authorization").ok_or((
        "MissingAuthenticationTokenException",
        "Missing Authentication Token".to_owned(),
    ))?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| incomplete("Unsupported authorization type"))?;
    let (mut credential, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(sig)) = (credential, signed, sig) else {
        return Err(incomplete(
            "Authorization header requires Credential, SignedHeaders and Signature",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, req_region, service, "aws4_request"] = scope.as_slice() else {
        return Err(incomplete(
            "Credential should be scoped to a valid region, service and aws4_request",
        ));
    };
    if *akid != creds.access_key_id {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    }
    if *req_region != region || *service != "kms" {
        return Err(invalid("Credential should be scoped to the correct region and service kms"));
    }
    let amz_date = get("x-amz-date").ok_or_else(|| incomplete("no X-Amz-Date"))?;
    if !amz_date.starts_with(date) {
        return Err(invalid("Date in Credential scope does not match the request date"));
    }
    let at = parse_amz_date(amz_date).ok_or_else(|| incomplete("bad X-Amz-Date"))?;
    if at.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(invalid("Signature expired: the request time is too far from the server's"));
    }
    let names: Vec<&str> = signed.split(';').collect();
    for required in ["host", "x-amz-date", "x-amz-target", "content-type"] {
        if !names.contains(&required) {
            return Err(incomplete(
                "SignedHeaders must include content-type, host, x-amz-date and x-amz-target",
            ));
        }
    }
    if creds.session_token.is_some() != names.contains(&"x-amz-security-token")
        || get("x-amz-security-token") != creds.session_token.as_deref()
    {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    }
    let mut to_sign = Vec::new();
    for name in &names {
        if *name != name.to_ascii_lowercase() {
            return Err(incomplete("SignedHeaders must be lower case"));
        }
        let mut found = false;
        for (n, v) in headers {
            if n.eq_ignore_ascii_case(name) {
                to_sign.push(((*name).to_owned(), v.clone()));
                found = true;
            }
        }
        if !found {
            return Err(incomplete("a signed header is missing"));
        }
    }
    let expected =
        signature(&creds.secret_access_key, amz_date, region, "kms", method, &to_sign, body);
    // Compared in constant time (the sim's secret is a fixed test value, but still).
    let equal = expected.len() == sig.len()
        && expected.bytes().zip(sig.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !equal {
        return Err(invalid(
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: zeroize::Zeroizing::new(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            ),
            session_token: None,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn sigv4_suite_vectors() {
        // AWS's SigV4 test suite: post-vanilla and post-x-www-form-urlencoded.
        let s = signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            "us-east-1",
            "service",
            "POST",
            &h(&[("host", "example.amazonaws.com"), ("x-amz-date", "20150830T123600Z")]),
            b"",
        );
        assert_eq!(s, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
        let s = signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            "us-east-1",
            "service",
            "POST",
            &h(&[
                ("content-type", "application/x-www-form-urlencoded"),
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ]),
            b"Param1=value1",
        );
        assert_eq!(s, "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a");
    }

    #[test]
    fn sigv4_sign_then_verify_and_every_refusal() {
        let now = 1_700_000_000_000;
        let date = amz_date(now);
        assert_eq!(parse_amz_date(&date), Some(now));
        let body = br#"{"KeyId":"k"}"#;
        let headers = sign(
            &creds(),
            "us-east-1",
            "kms.us-east-1.amazonaws.com",
            &date,
            "TrentService.Decrypt",
            body,
        );
        assert_eq!(verify(&creds(), "us-east-1", now, "POST", &headers, body), Ok(()));
        // Altered body, target, region, skew, key, token.
        assert_eq!(
            verify(&creds(), "us-east-1", now, "POST", &headers, b"{}").unwrap_err().0,
            "InvalidSignatureException"
        );
        let mut other = headers.clone();
        other[3].1 = "TrentService.Encrypt".into();
        assert_eq!(
            verify(&creds(), "us-east-1", now, "POST", &other, body).unwrap_err().0,
            "InvalidSignatureException"
        );
        assert_eq!(
            verify(&creds(), "eu-west-1", now, "POST", &headers, body).unwrap_err().0,
            "InvalidSignatureException"
        );
        assert_eq!(
            verify(&creds(), "us-east-1", now + MAX_SKEW_MS + 1000, "POST", &headers, body)
                .unwrap_err()
                .0,
            "InvalidSignatureException"
        );
        let mut wrong = creds();
        wrong.access_key_id = "AKIAOTHER".into();
        assert_eq!(
            verify(&wrong, "us-east-1", now, "POST", &headers, body).unwrap_err().0,
            "UnrecognizedClientException"
        );
        let mut temp = creds();
        temp.session_token = Some("tok".into());
        assert_eq!(
            verify(&temp, "us-east-1", now, "POST", &headers, body).unwrap_err().0,
            "UnrecognizedClientException"
        );
        let signed = sign(&temp, "us-east-1", "h", &date, "TrentService.Decrypt", body);
        assert_eq!(verify(&temp, "us-east-1", now, "POST", &signed, body), Ok(()));
        let unsigned: Vec<_> =
            headers.iter().filter(|(n, _)| n != "authorization").cloned().collect();
        assert_eq!(
            verify(&creds(), "us-east-1", now, "POST", &unsigned, body).unwrap_err().0,
            "MissingAuthenticationTokenException"
        );
    }
}
