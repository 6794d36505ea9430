//! `walletctl mcp --http ADDR`: the MCP server over streamable HTTP, at `http://ADDR/mcp`.
//!
//! The tools spend money, so the server binds a loopback address unless the operator says
//! otherwise ([`HttpOptions::allow_non_loopback`], which needs an explicit token), rejects
//! requests whose `Host` is not the address it serves (DNS rebinding) and any request a browser
//! sends with an `Origin`, and always requires `Authorization: Bearer TOKEN`: the operator's
//! [`HttpOptions::token`], or one generated for the run ([`generate_token`]) and printed once
//! on stderr (any local process or user could otherwise spend within the session's limits).

use std::net::SocketAddr;

use axum::{
    extract::Request,
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse as _, Response},
    Router,
};
use rmcp::transport::{
    streamable_http_server::session::local::LocalSessionManager, StreamableHttpServerConfig,
    StreamableHttpService,
};

use crate::{server::McpServer, wallet::Wallet};

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";

/// How the HTTP server is exposed.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// Serve on an address that is not loopback (anyone who can reach it can spend within the
    /// session's limits: use with [`Self::token`]).
    pub allow_non_loopback: bool,
    /// The bearer token required on every request (`--http-token`). [`serve_http`] and
    /// [`HttpServer::bind`] generate one when it is `None` (loopback only); [`router`] without
    /// one requires none (tests).
    pub token: Option<String>,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("allow_non_loopback", &self.allow_non_loopback)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Refuses a non-loopback `addr` unless `allow_non_loopback` and an explicit token
/// (`token_given`: `--http-token` or `WALLET_MCP_HTTP_TOKEN`).
///
/// # Errors
/// A sentence saying why and what flag allows it.
pub fn check_bind(
    addr: &SocketAddr,
    allow_non_loopback: bool,
    token_given: bool,
) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else if !allow_non_loopback {
        Err(format!(
            "--http {addr}: not a loopback address. These tools spend money: anyone who can reach the server can pay within the session's limits. Bind 127.0.0.1, or pass --allow-non-loopback with a token (WALLET_MCP_HTTP_TOKEN) if you mean it"
        ))
    } else if !token_given {
        Err(format!(
            "--http {addr} --allow-non-loopback needs an explicit bearer token: set WALLET_MCP_HTTP_TOKEN (or --http-token, which other users can read in `ps`) to a long random secret, and give it to the MCP client"
        ))
    } else {
        Ok(())
    }
}

/// Checks an operator's token: not empty, and only characters a header value may hold.
///
/// # Errors
/// A sentence.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.trim().is_empty() {
        return Err("--http-token (WALLET_MCP_HTTP_TOKEN) is empty".to_owned());
    }
    if token.trim() != token || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("--http-token (WALLET_MCP_HTTP_TOKEN) must be printable ASCII without spaces"
            .to_owned());
    }
    Ok(())
}

/// A fresh bearer token: 32 random bytes (OS randomness), in hex.
#[must_use]
pub fn generate_token() -> String {
    use rand_core::RngCore as _;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Hosts accepted in the `Host` header: loopback names, and the bound address itself.
fn allowed_hosts(addr: &SocketAddr) -> Vec<String> {
    let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let ip = addr.ip().to_string();
    if !hosts.contains(&ip) {
        hosts.push(ip);
    }
    hosts
}

/// The router: the MCP service at [`MCP_PATH`], behind the token check when one is set.
pub fn router<W: Wallet>(
    server: McpServer<W>,
    addr: &SocketAddr,
    options: &HttpOptions,
) -> (Router, impl FnOnce()) {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts(addr))
        .enforce_origin_validation();
    let stop = config.cancellation_token.clone();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        config,
    );
    let mut app = Router::new().nest_service(MCP_PATH, service);
    if let Some(token) = options.token.clone() {
        let expected = format!("Bearer {token}");
        app = app.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()));
            async move {
                if ok {
                    next.run(req).await
                } else {
                    unauthorized()
                }
            }
        }));
    }
    (app, move || stop.cancel())
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required: send Authorization: Bearer TOKEN (the token walletctl mcp --http printed, or WALLET_MCP_HTTP_TOKEN)",
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A bound HTTP server, not serving yet: [`HttpServer::serve`] runs it.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: String,
    app: Router,
    stop: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Binds `addr` for `server`. Without [`HttpOptions::token`], a token is generated
    /// ([`generate_token`]) and printed once on stderr with how to use it.
    ///
    /// # Errors
    /// [`check_bind`] or [`check_token`] refuses, or the address cannot be bound.
    pub async fn bind<W: Wallet>(
        server: McpServer<W>,
        addr: SocketAddr,
        options: HttpOptions,
    ) -> Result<Self, String> {
        check_bind(&addr, options.allow_non_loopback, options.token.is_some())?;
        if let Some(t) = &options.token {
            check_token(t)?;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let url = format!("http://{bound}{MCP_PATH}");
        let token = match options.token.clone() {
            Some(t) => {
                eprintln!(
                    "walletctl mcp: serving MCP (streamable HTTP) at {url} (bearer token required)"
                );
                t
            }
            None => {
                let t = generate_token();
                eprintln!(
                    "walletctl mcp: serving MCP (streamable HTTP) at {url}\n\
                     walletctl mcp: no --http-token given, so this run requires this generated bearer token (shown once):\n\
                     \n    {t}\n\n\
                     walletctl mcp: MCP clients must send the header `Authorization: Bearer {t}`. To choose your own token, set WALLET_MCP_HTTP_TOKEN (preferred: a --http-token flag shows in `ps`)."
                );
                t
            }
        };
        let options = HttpOptions { token: Some(token.clone()), ..options };
        let (app, stop) = router(server, &bound, &options);
        Ok(Self { listener, addr: bound, token, app, stop: Box::new(stop) })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token requests must carry.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Serves until Ctrl-C (or SIGTERM).
    ///
    /// # Errors
    /// The server stopped on an I/O error.
    pub async fn serve(self) -> Result<(), String> {
        let stop = self.stop;
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                stop();
            })
            .await
            .map_err(|e| format!("the HTTP server stopped: {e}"))
    }
}

/// Serves `server` over streamable HTTP at `http://addr/mcp` until Ctrl-C (or SIGTERM),
/// requiring a bearer token (generated and printed on stderr when none is given).
///
/// # Errors
/// A non-loopback address without [`HttpOptions::allow_non_loopback`] and a token, or the
/// address cannot be bound.
pub async fn serve_http<W: Wallet>(
    server: McpServer<W>,
    addr: SocketAddr,
    options: HttpOptions,
) -> Result<(), String> {
    HttpServer::bind(server, addr, options).await?.serve().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed_with_a_token() {
        for ok in ["127.0.0.1:8402", "[::1]:8402", "127.0.0.2:1"] {
            assert!(check_bind(&ok.parse().unwrap(), false, false).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8402", "192.168.1.2:8402", "[::]:8402"] {
            let e = check_bind(&bad.parse().unwrap(), false, true).unwrap_err();
            assert!(e.contains("--allow-non-loopback"), "{e}");
            // Finding: --allow-non-loopback without an explicit token.
            let e = check_bind(&bad.parse().unwrap(), true, false).unwrap_err();
            assert!(e.contains("WALLET_MCP_HTTP_TOKEN"), "{e}");
            assert!(check_bind(&bad.parse().unwrap(), true, true).is_ok());
        }
        assert_eq!(allowed_hosts(&"127.0.0.1:1".parse().unwrap()).len(), 3);
        assert!(allowed_hosts(&"10.0.0.5:1".parse().unwrap()).contains(&"10.0.0.5".to_owned()));
    }

    #[test]
    fn generated_tokens_are_32_random_bytes_and_bad_tokens_are_refused() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(check_token(&a).is_ok());
        for bad in ["", "  ", "has space", " lead", "tab\t", "é"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
        let o = HttpOptions { allow_non_loopback: false, token: Some("sekrit".into()) };
        assert!(!format!("{o:?}").contains("sekrit"));
    }
}
