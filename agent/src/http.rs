//! The HTTP side: one buffered request, sent as often as needed (the first attempt and the
//! paid retry carry the same bytes), redirects followed by hand so that a payment header never
//! crosses to another origin, and bodies read within a bound.

use std::time::Duration;

use reqwest::{
    header::{HeaderMap, HeaderName, HeaderValue},
    Method, StatusCode, Url,
};

use crate::PayError;

/// Limits and timeouts of the HTTP client.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest response body read, in bytes [default: 64 MiB].
    pub max_body_bytes: usize,
    /// Time allowed for one whole exchange (connect, send, read) [default: 60 s].
    pub timeout: Duration,
    /// Time allowed to connect [default: 10 s].
    pub connect_timeout: Duration,
    /// Most redirects followed when asked to follow them [default: 10].
    pub max_redirects: usize,
    /// How many more times a paid request is sent, with the identical payment, when its answer
    /// is lost (connection error, timeout) [default: 2].
    pub lost_response_retries: u32,
    /// Pause before the first such retry; doubled each time [default: 250 ms].
    pub retry_backoff: Duration,
    /// `User-Agent` unless the caller sets one [default: `walletctl/VERSION (x402)`].
    pub user_agent: String,
}

/// Largest response body read by default: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 10,
            lost_response_retries: 2,
            retry_backoff: Duration::from_millis(250),
            user_agent: format!("walletctl/{} (x402)", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Installs ring as rustls' process-wide crypto provider, once (reqwest is built without a
/// bundled provider so that aws-lc is not compiled). If another provider was installed first,
/// that one is used. Call it before building another reqwest client in the same process;
/// [`crate::Payer`] calls it itself.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds the reqwest client: no automatic redirects (followed here), the platform's
/// certificate verifier.
pub(crate) fn client(config: &HttpConfig) -> Result<reqwest::Client, PayError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.connect_timeout)
        .build()
        .map_err(|e| PayError::Other(format!("cannot build the HTTP client: {e}")))
}

/// A request, buffered: every send carries exactly these bytes.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    /// The body, shared between attempts.
    body_bytes: Option<std::sync::Arc<[u8]>>,
}

impl Prepared {
    /// Validates the caller's method, URL and headers and buffers the body.
    pub(crate) fn new(
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
        user_agent: &str,
    ) -> Result<Self, PayError> {
        let method_text = if method.is_empty() {
            if body.is_some() {
                "POST"
            } else {
                "GET"
            }
        } else {
            method
        };
        let method = Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
            .map_err(|_| PayError::Usage(format!("{method_text:?} is not an HTTP method")))?;
        let url = Url::parse(url).map_err(|e| {
            let hint = if url.contains("://") { "" } else { " (add http:// or https://)" };
            PayError::Usage(format!("bad URL {url:?}: {e}{hint}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PayError::Usage(format!(
                "bad URL {url}: only http and https URLs can be fetched"
            )));
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let n = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| PayError::Usage(format!("bad header name {name:?}")))?;
            if is_payment_header(&n) {
                return Err(PayError::Usage(format!(
                    "do not set {n} yourself: the wallet adds the payment header when the server asks for one"
                )));
            }
            let v = HeaderValue::from_str(value.trim())
                .map_err(|_| PayError::Usage(format!("bad value for header {name:?}")))?;
            map.append(n, v);
        }
        if !map.contains_key(reqwest::header::USER_AGENT) {
            if let Ok(v) = HeaderValue::from_str(user_agent) {
                map.insert(reqwest::header::USER_AGENT, v);
            }
        }
        let body_bytes = body.map(std::sync::Arc::from);
        Ok(Self { method, url, headers: map, body_bytes })
    }

    fn body(&self) -> Option<Vec<u8>> {
        self.body_bytes.as_ref().map(|b| b.to_vec())
    }
}

/// Whether `name` is a header that carries a payment.
fn is_payment_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.eq_ignore_ascii_case(crate::wire::PAYMENT_SIGNATURE)
        || n.eq_ignore_ascii_case(crate::wire::X_PAYMENT)
}

/// The only caller headers carried to another origin on a redirect: none of them can hold a
/// secret. Every other header (`Authorization`, `Cookie`, `X-Api-Key`, `X-Auth-Token`, ...)
/// stays with the origin it was meant for, and so does the payment header.
const CROSS_ORIGIN_HEADERS: &[&str] = &["accept", "accept-language", "content-type", "user-agent"];

/// A response, its body read, and the request that produced it (after redirects: the one
/// to repeat with a payment).
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub version: reqwest::Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The request that got this answer (its URL, method and body after redirects).
    pub request: Prepared,
    /// Settlement headers seen on redirect responses to a paid request.
    pub settle_on_redirect: Option<HeaderValue>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum HttpFailure {
    /// The server could not be reached or its answer was lost: worth a retry.
    Lost(String),
    /// Anything else (too many redirects, a body over the limit, a bad Location).
    Fatal(PayError),
}

/// Sends `req` (with `payment`, a header name and value, sent only to `req`'s origin),
/// following redirects when `follow`.
pub(crate) async fn exchange(
    client: &reqwest::Client,
    config: &HttpConfig,
    req: &Prepared,
    payment: Option<(&'static str, &str)>,
    follow: bool,
) -> Result<Answer, HttpFailure> {
    let paid_origin = req.url.origin();
    let mut current = req.clone();
    let mut settle_on_redirect = None;
    for _hop in 0..=config.max_redirects {
        let mut headers = current.headers.clone();
        if let Some((name, value)) = payment {
            if current.url.origin() == paid_origin {
                let v = HeaderValue::from_str(value).map_err(|_| {
                    HttpFailure::Fatal(PayError::Other(
                        "the payment header value is not a valid header".to_owned(),
                    ))
                })?;
                headers.insert(HeaderName::from_static(static_lower(name)), v);
            }
        }
        let mut builder =
            client.request(current.method.clone(), current.url.clone()).headers(headers);
        if let Some(b) = current.body() {
            builder = builder.body(b);
        }
        let resp = builder.send().await.map_err(|e| HttpFailure::Lost(describe(&e)))?;
        let status = resp.status();
        let location = resp.headers().get(reqwest::header::LOCATION).cloned();
        if follow && status.is_redirection() && location.is_some() {
            if payment.is_some() {
                if let Some(v) = settlement_header(resp.headers()) {
                    settle_on_redirect = Some(v.clone());
                }
            }
            let location = location.unwrap_or_else(|| HeaderValue::from_static(""));
            let next = location
                .to_str()
                .ok()
                .and_then(|l| current.url.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    HttpFailure::Fatal(PayError::Other(format!(
                        "{} redirected to an unusable Location {location:?}",
                        current.url
                    )))
                })?;
            let cross_origin = next.origin() != current.url.origin();
            let next = redirected(current.clone(), status, next);
            if cross_origin && next.body_bytes.as_ref().is_some_and(|b| !b.is_empty()) {
                // A 307/308 (or 301/302 of a PUT, ...) would carry the body to another origin:
                // not followed; the redirect is the answer, as without -L.
                tracing::warn!(from = %current.url, to = %next.url, %status, "not following a redirect that would send the request body to another origin");
            } else {
                current = next;
                continue;
            }
        }
        let headers = resp.headers().clone();
        let version = resp.version();
        let body = read_body(resp, config.max_body_bytes).await?;
        return Ok(Answer { status, version, headers, body, request: current, settle_on_redirect });
    }
    Err(HttpFailure::Fatal(PayError::Other(format!(
        "more than {} redirects from {}",
        config.max_redirects, req.url
    ))))
}

/// The settlement header of a response, v2 or v1.
pub(crate) fn settlement_header(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers
        .get(crate::wire::PAYMENT_RESPONSE)
        .or_else(|| headers.get(crate::wire::X_PAYMENT_RESPONSE))
}

/// The request after a redirect: 303 (and 301/302 of a POST, as curl and browsers do) becomes
/// a GET without a body; 307/308 keep the method and body. To another origin only the
/// [`CROSS_ORIGIN_HEADERS`] go: credentials and every custom header stay with their origin.
fn redirected(mut req: Prepared, status: StatusCode, next: Url) -> Prepared {
    let to_get = status == StatusCode::SEE_OTHER
        || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
            && req.method == Method::POST);
    if to_get {
        if req.method != Method::HEAD {
            req.method = Method::GET;
        }
        req.body_bytes = None;
        req.headers.remove(reqwest::header::CONTENT_TYPE);
        req.headers.remove(reqwest::header::CONTENT_LENGTH);
    }
    if next.origin() != req.url.origin() {
        let private: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| !CROSS_ORIGIN_HEADERS.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in private {
            req.headers.remove(name);
        }
    }
    req.url = next;
    req
}

/// Reads a body, failing past `max` bytes.
async fn read_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, HttpFailure> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(HttpFailure::Fatal(PayError::Other(format!(
            "the response body is {} bytes, more than the {max}-byte limit",
            resp.content_length().unwrap_or_default()
        ))));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| HttpFailure::Lost(describe(&e)))? {
        if body.len() + chunk.len() > max {
            return Err(HttpFailure::Fatal(PayError::Other(format!(
                "the response body is larger than the {max}-byte limit"
            ))));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error with its causes, one line.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = if e.is_timeout() { format!("timed out: {e}") } else { e.to_string() };
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// The lower-case static name of a payment header (header names are case-insensitive; hyper
/// sends them lower-case on HTTP/2 and as given on HTTP/1).
fn static_lower(name: &'static str) -> &'static str {
    if name.eq_ignore_ascii_case(crate::wire::X_PAYMENT) {
        "x-payment"
    } else {
        "payment-signature"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(method: &str, url: &str, body: Option<&[u8]>) -> Prepared {
        Prepared::new(
            method,
            url,
            &[
                ("Authorization".into(), "Bearer t".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body,
            "ua",
        )
        .unwrap()
    }

    #[test]
    fn requests_are_checked() {
        let p = prepared("", "http://a.example/x", Some(b"{}"));
        assert_eq!(p.method, Method::POST, "a body without -X is a POST, as in curl");
        assert_eq!(p.headers["user-agent"], "ua");
        assert_eq!(prepared("get", "https://a.example/", None).method, Method::GET);
        for (m, u, h, says) in [
            ("GET", "ftp://a/", "", "only http and https"),
            ("GET", "not a url", "", "bad URL"),
            ("G ET", "http://a/", "", "not an HTTP method"),
            ("GET", "http://a/", "PAYMENT-SIGNATURE", "do not set"),
            ("GET", "http://a/", "x-payment", "do not set"),
            ("GET", "http://a/", "bad header", "bad header name"),
        ] {
            let headers = if h.is_empty() { vec![] } else { vec![(h.to_owned(), "v".to_owned())] };
            let e = Prepared::new(m, u, &headers, None, "ua").unwrap_err();
            assert!(matches!(e, PayError::Usage(_)) && e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn only_harmless_headers_cross_origins() {
        let p = Prepared::new(
            "GET",
            "http://a.example/x",
            &[
                ("Authorization".into(), "Bearer t".into()),
                ("Cookie".into(), "c=1".into()),
                ("Proxy-Authorization".into(), "Basic x".into()),
                ("X-Api-Key".into(), "k".into()),
                ("X-Auth-Token".into(), "t".into()),
                ("Accept".into(), "text/plain".into()),
                ("Accept".into(), "application/json".into()),
                ("Accept-Language".into(), "fr".into()),
                ("User-Agent".into(), "me".into()),
            ],
            None,
            "ua",
        )
        .unwrap();
        let other =
            redirected(p.clone(), StatusCode::FOUND, Url::parse("http://b.example/y").unwrap());
        let mut names: Vec<&str> = other.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "accept-language", "user-agent"]);
        assert_eq!(other.headers.get_all("accept").iter().count(), 2, "repeated values kept");
        assert_eq!(other.headers["user-agent"], "me");
        // Another port or scheme is another origin too; the same origin keeps everything.
        for url in ["http://a.example:8080/y", "https://a.example/y"] {
            let o = redirected(p.clone(), StatusCode::FOUND, Url::parse(url).unwrap());
            assert!(!o.headers.contains_key("x-api-key"), "{url}");
        }
        let same = redirected(p, StatusCode::FOUND, Url::parse("http://a.example/z").unwrap());
        assert_eq!((same.headers["x-api-key"].to_str().unwrap(), same.headers.len()), ("k", 9));
    }

    #[test]
    fn redirects_keep_credentials_at_home() {
        let p = prepared("POST", "http://a.example/x", Some(b"{}"));
        let same = redirected(
            p.clone(),
            StatusCode::TEMPORARY_REDIRECT,
            Url::parse("http://a.example/y").unwrap(),
        );
        assert_eq!(same.method, Method::POST);
        assert_eq!(same.body().as_deref(), Some(&b"{}"[..]), "307 keeps the body");
        assert!(same.headers.contains_key("authorization"));
        let other = redirected(
            p.clone(),
            StatusCode::PERMANENT_REDIRECT,
            Url::parse("http://b.example/y").unwrap(),
        );
        assert!(!other.headers.contains_key("authorization"), "not sent to another origin");
        assert_eq!(other.body().as_deref(), Some(&b"{}"[..]));
        let see_other =
            redirected(p, StatusCode::SEE_OTHER, Url::parse("http://a.example/z").unwrap());
        assert_eq!((&see_other.method, see_other.body()), (&Method::GET, None));
        assert!(!see_other.headers.contains_key("content-type"));
    }
}
