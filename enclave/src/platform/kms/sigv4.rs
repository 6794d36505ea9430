//! AWS Signature Version 4 (the `Authorization` header form), for the enclave's KMS requests.
//!
//! Our own ~100 lines rather than the `aws-sigv4` crate, which brings the AWS Smithy runtime
//! (http types, time crates, its own credential types) into the trusted code base for one HMAC
//! chain. Tested against AWS's published SigV4 test suite (the `tests` below; source: "Signature
//! Version 4 test suite", AWS General Reference, credentials `AKIDEXAMPLE`).
//!
//! Scope: what a JSON 1.1 `POST /` needs, plus the general header and query canonicalisation the
//! suite exercises. Paths are taken as already canonical (`/`), and query keys and values as
//! already URI-encoded (the enclave sends no query).
//!
//! The credentials only authorise requests: nothing secret to the enclave depends on them.
//! Still, the secret access key and every key derived from it are zeroized.

use std::fmt::Write as _;

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The signing algorithm's name, as it appears in the header and the string to sign.
pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// One request to sign: `headers` as sent (name, value), in any order and case; they must
/// include `host` and `x-amz-date` (and `x-amz-security-token` when there is a session token).
/// `Debug` shows the header names and the body's length, never a value (the session token is
/// one).
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The canonical path (`/`).
    pub path: &'a str,
    /// The query string without `?`: `k=v&k2=v2`, already URI-encoded (empty for none).
    pub query: &'a str,
    /// Every header to sign.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &self.headers.iter().map(|(n, _)| *n).collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Who signs and for which scope (no `Debug`: it holds the secret access key).
pub(crate) struct Scope<'a> {
    /// The access key id (`AKIA...`/`ASIA...`).
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a str,
    /// `us-east-1`, ...
    pub region: &'a str,
    /// `kms` (the test suite uses `service`).
    pub service: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`, the same value as the `x-amz-date` header.
    pub amz_date: &'a str,
}

/// The canonical request and the `SignedHeaders` list (lower-case names joined by `;`).
pub(crate) fn canonical_request(req: &Request<'_>) -> (String, String) {
    // Lower-case names; values trimmed with inner runs of spaces collapsed; repeated names
    // joined by `,` in the order given; sorted by name.
    let mut headers: Vec<(String, String)> = Vec::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        let name = name.trim().to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let signed = headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    let mut query: Vec<(&str, &str)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    query.sort_unstable();
    let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut out = format!("{}\n{}\n{query}\n", req.method, req.path);
    for (n, v) in &headers {
        let _ = writeln!(out, "{n}:{v}");
    }
    let _ = write!(out, "\n{signed}\n{}", hex::encode(Sha256::digest(req.body)));
    (out, signed)
}

/// `YYYYMMDD/region/service/aws4_request`.
fn credential_scope(scope: &Scope<'_>) -> String {
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    format!("{date}/{}/{}/aws4_request", scope.region, scope.service)
}

/// The string to sign for a canonical request.
pub(crate) fn string_to_sign(scope: &Scope<'_>, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        scope.amz_date,
        credential_scope(scope),
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The hex signature of `req` (also what a verifier recomputes).
pub(crate) fn signature(scope: &Scope<'_>, req: &Request<'_>) -> String {
    let (creq, _) = canonical_request(req);
    let sts = string_to_sign(scope, &creq);
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    let secret = Zeroizing::new(format!("AWS4{}", scope.secret_access_key));
    let k_date = hmac(secret.as_bytes(), date.as_bytes());
    let k_region = hmac(k_date.as_ref(), scope.region.as_bytes());
    let k_service = hmac(k_region.as_ref(), scope.service.as_bytes());
    let k_signing = hmac(k_service.as_ref(), b"aws4_request");
    hex::encode(hmac(k_signing.as_ref(), sts.as_bytes()).as_ref())
}

/// The `Authorization` header value for `req`.
pub(crate) fn authorization(scope: &Scope<'_>, req: &Request<'_>) -> String {
    let (_, signed) = canonical_request(req);
    format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={signed}, Signature={}",
        scope.access_key_id,
        credential_scope(scope),
        signature(scope, req)
    )
}

/// `YYYYMMDD'T'HHMMSS'Z'` (UTC) for Unix seconds `secs` (proleptic Gregorian calendar).
pub(crate) fn amz_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Year, month, day of the `days`-th day after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite's credentials and date.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const HOST: (&str, &str) = ("Host", "example.amazonaws.com");
    const XDATE: (&str, &str) = ("X-Amz-Date", DATE);
    const TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn scope() -> Scope<'static> {
        Scope {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region: "us-east-1",
            service: "service",
            amz_date: DATE,
        }
    }

    /// (suite name, method, query, headers, body, expected signature).
    type Vector = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );

    /// Vectors of AWS's SigV4 test suite (expected signatures as published).
    const VECTORS: &[Vector] = &[
        (
            "get-vanilla",
            "GET",
            "",
            &[HOST, XDATE],
            "",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "get-header-key-duplicate",
            "GET",
            "",
            &[
                HOST,
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
                XDATE,
            ],
            "",
            "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        ),
        (
            "get-header-value-order",
            "GET",
            "",
            &[
                HOST,
                ("My-Header1", "value4"),
                ("My-Header1", "value1"),
                ("My-Header1", "value3"),
                ("My-Header1", "value2"),
                XDATE,
            ],
            "",
            "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
        ),
        (
            "get-header-value-trim",
            "GET",
            "",
            &[HOST, ("My-Header1", " value1"), ("My-Header2", " \"a   b   c\""), XDATE],
            "",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        ),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "Param2=value2&Param1=value1",
            &[HOST, XDATE],
            "",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "get-vanilla-query-order-value",
            "GET",
            "Param1=value2&Param1=value1",
            &[HOST, XDATE],
            "",
            "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694",
        ),
        (
            "post-vanilla",
            "POST",
            "",
            &[HOST, XDATE],
            "",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "post-vanilla-query",
            "POST",
            "Param1=value1",
            &[HOST, XDATE],
            "",
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        ),
        (
            "post-header-key-sort",
            "POST",
            "",
            &[HOST, ("My-Header1", "value1"), XDATE],
            "",
            "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
        ),
        (
            "post-header-value-case",
            "POST",
            "",
            &[HOST, ("My-Header1", "VALUE1"), XDATE],
            "",
            "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
        ),
        (
            "post-x-www-form-urlencoded",
            "POST",
            "",
            &[("Content-Type", "application/x-www-form-urlencoded"), HOST, XDATE],
            "Param1=value1",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
        (
            "post-x-www-form-urlencoded-parameters",
            "POST",
            "",
            &[("Content-Type", "application/x-www-form-urlencoded; charset=utf8"), HOST, XDATE],
            "Param1=value1",
            "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe",
        ),
        (
            "post-sts-header-before",
            "POST",
            "",
            &[HOST, XDATE, ("X-Amz-Security-Token", TOKEN)],
            "",
            "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
        ),
    ];

    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        for (name, method, query, headers, body, expected) in VECTORS {
            let req = Request { method, path: "/", query, headers, body: body.as_bytes() };
            assert_eq!(signature(&scope(), &req), *expected, "vector {name}");
        }
    }

    #[test]
    fn sigv4_intermediate_steps_match_the_suite() {
        // get-vanilla: the canonical request and the string to sign, as published.
        let req =
            Request { method: "GET", path: "/", query: "", headers: &[HOST, XDATE], body: b"" };
        let (creq, signed) = canonical_request(&req);
        assert_eq!(
            creq,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(signed, "host;x-amz-date");
        assert_eq!(
            string_to_sign(&scope(), &creq),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(
            authorization(&scope(), &req),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // post-x-www-form-urlencoded: the string to sign (covers the body hash).
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &[("Content-Type", "application/x-www-form-urlencoded"), HOST, XDATE],
            body: b"Param1=value1",
        };
        let (creq, _) = canonical_request(&req);
        assert!(string_to_sign(&scope(), &creq)
            .ends_with("42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281"));
    }

    #[test]
    fn sigv4_request_debug_shows_no_header_value() {
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &[HOST, XDATE, ("X-Amz-Security-Token", TOKEN)],
            body: b"{\"secret-ish\": 1}",
        };
        let shown = format!("{req:?}");
        assert!(
            shown.contains("X-Amz-Security-Token") && shown.contains("body_len: 17"),
            "{shown}"
        );
        assert!(!shown.contains(TOKEN) && !shown.contains("secret-ish"), "{shown}");
    }

    #[test]
    fn amz_date_formats_utc() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        // The suite's date.
        assert_eq!(amz_date(1_440_938_160), DATE);
        // A leap day and the end of a year.
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_798_761_599), "20261231T235959Z");
    }
}
