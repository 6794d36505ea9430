//! Host<->enclave transport: length-prefixed protobuf frames over a Unix socket (simulated) or
//! vsock (Nitro). Connection handling is generic over `AsyncRead + AsyncWrite`, so tests drive it
//! over in-memory pipes.
//!
//! Many requests share one connection: each is handled in its own task and answered when done,
//! tagged with its request id. Oversized frames are refused before allocation and end the
//! connection (the stream can no longer be trusted to be in sync).

use std::{path::Path, sync::Arc};

use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};
use wallet_proto::{
    enclave::v1::{self as en, enclave_response::Body as Resp, ErrorCode},
    encode_frame,
    frame::{read_frame, ReadError},
    Reason,
};

use crate::service::Enclave;

/// Serves one connection until the peer closes it or sends a bad frame.
pub async fn serve_connection<S>(stream: S, enclave: Arc<Enclave>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(stream);
    // Buffered: several frames arriving together cost one read.
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let buf = match read_frame(&mut rd).await {
            Ok(Some(buf)) => buf,
            Ok(None) | Err(ReadError::Io(_)) => break,
            Err(ReadError::Frame(e)) => {
                tracing::warn!(error = %e, "closing connection on an oversized frame");
                break;
            }
        };
        let tx = tx.clone();
        let enclave = Arc::clone(&enclave);
        tokio::spawn(async move {
            let resp = match en::EnclaveRequest::decode(buf.as_slice()) {
                Ok(req) => enclave.handle(req).await,
                Err(e) => en::EnclaveResponse {
                    request_id: 0,
                    body: Some(Resp::Error(en::EnclaveError {
                        code: ErrorCode::InvalidArgument.into(),
                        reason: Reason::MalformedFrame.as_str().into(),
                        message: format!("frame is not an EnclaveRequest: {e}"),
                    })),
                },
            };
            match encode_frame(&resp) {
                Ok(frame) => {
                    let _ = tx.send(frame).await;
                }
                Err(e) => tracing::error!(error = %e, "response too large to send"),
            }
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// Listens on a Unix socket (0600) and serves every connection.
///
/// # Errors
/// When the socket cannot be bound.
pub async fn serve_unix(path: &Path, enclave: Arc<Enclave>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "listening");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve_connection(stream, Arc::clone(&enclave)));
    }
}

/// Listens on vsock (Nitro) and serves every connection. Never used on development machines.
///
/// # Errors
/// When the port cannot be bound.
#[cfg(target_os = "linux")]
pub async fn serve_vsock(port: u32, enclave: Arc<Enclave>) -> std::io::Result<()> {
    let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
        tokio_vsock::VMADDR_CID_ANY,
        port,
    ))?;
    tracing::info!(port, "listening on vsock");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve_connection(stream, Arc::clone(&enclave)));
    }
}
