//! `walletctl mcp --http ADDR`: the MCP server over streamable HTTP, at `http://ADDR/mcp`.
//!
//! The tools spend money, so the server binds a loopback address unless the operator says
//! otherwise ([`HttpOptions::allow_non_loopback`]), rejects requests whose `Host` is not the
//! address it serves (DNS rebinding) and any request a browser sends with an `Origin`, and,
//! with [`HttpOptions::token`], requires `Authorization: Bearer TOKEN`.

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
    /// Require `Authorization: Bearer TOKEN` on every request.
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

/// Refuses a non-loopback `addr` unless `allow_non_loopback`.
///
/// # Errors
/// A sentence saying why and what flag allows it.
pub fn check_bind(addr: &SocketAddr, allow_non_loopback: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_non_loopback {
        Ok(())
    } else {
        Err(format!(
            "--http {addr}: not a loopback address. These tools spend money: anyone who can reach the server can pay within the session's limits. Bind 127.0.0.1, or pass --allow-non-loopback (with --http-token) if you mean it"
        ))
    }
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
        "a bearer token is required (walletctl mcp --http-token)",
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `server` over streamable HTTP at `http://addr/mcp` until Ctrl-C (or SIGTERM).
///
/// # Errors
/// A non-loopback address without [`HttpOptions::allow_non_loopback`], or the address cannot
/// be bound.
pub async fn serve_http<W: Wallet>(
    server: McpServer<W>,
    addr: SocketAddr,
    options: HttpOptions,
) -> Result<(), String> {
    check_bind(&addr, options.allow_non_loopback)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let (app, stop) = router(server, &bound, &options);
    eprintln!(
        "walletctl mcp: serving MCP (streamable HTTP) at http://{bound}{MCP_PATH}{}",
        if options.token.is_some() { " (bearer token required)" } else { "" }
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stop();
        })
        .await
        .map_err(|e| format!("the HTTP server stopped: {e}"))
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
    fn only_loopback_unless_allowed() {
        for ok in ["127.0.0.1:8402", "[::1]:8402", "127.0.0.2:1"] {
            assert!(check_bind(&ok.parse().unwrap(), false).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8402", "192.168.1.2:8402", "[::]:8402"] {
            let e = check_bind(&bad.parse().unwrap(), false).unwrap_err();
            assert!(e.contains("--allow-non-loopback"), "{e}");
            assert!(check_bind(&bad.parse().unwrap(), true).is_ok());
        }
        assert_eq!(allowed_hosts(&"127.0.0.1:1".parse().unwrap()).len(), 3);
        assert!(allowed_hosts(&"10.0.0.5:1".parse().unwrap()).contains(&"10.0.0.5".to_owned()));
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
