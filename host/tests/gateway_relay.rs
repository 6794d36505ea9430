//! Component tests of the gateway: the real tonic server (on loopback, port 0) relaying to a
//! fake enclave that speaks the frame protocol on a Unix socket in a tempdir. They check the
//! relay and the error mapping (gRPC code, `x-wallet-reason`, `google.rpc.ErrorInfo`).

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use prost::Message as _;
use tokio::{io::AsyncWriteExt as _, net::UnixListener, sync::oneshot};
use tonic::Code;
use tonic_types::StatusExt as _;
use wallet_client::{GatewayClient, Reason, REASON_METADATA};
use wallet_host::{EnclaveAddress, EnclaveClient};
use wallet_proto::{
    enclave::v1::{
        enclave_request::Body as Req, enclave_response::Body as Resp, EnclaveError, EnclaveRequest,
        EnclaveResponse, ErrorCode,
    },
    encode_frame,
    frame::read_frame,
    gateway::v1 as gw,
    ENCLAVE_PROTOCOL_VERSION, ERROR_DOMAIN,
};

type Answer = Arc<dyn Fn(Req) -> Resp + Send + Sync>;

/// A fake enclave on a Unix socket: answers each framed request with `answer`, counting them.
fn fake_enclave(socket: &Path, answer: Answer) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(socket).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (answer, counter) = (Arc::clone(&answer), Arc::clone(&counter));
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut rd = tokio::io::BufReader::new(rd);
                while let Ok(Some(frame)) = read_frame(&mut rd).await {
                    let req = EnclaveRequest::decode(frame.as_slice()).unwrap();
                    assert_eq!(req.protocol_version, ENCLAVE_PROTOCOL_VERSION);
                    counter.fetch_add(1, Ordering::SeqCst);
                    let resp = EnclaveResponse {
                        answer_signature: Vec::new(),
                        request_id: req.request_id,
                        body: Some(answer(req.body.unwrap())),
                    };
                    if wr.write_all(&encode_frame(&resp).unwrap()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    seen
}

/// A running gateway relaying to `enclave`; stops when the returned sender is dropped.
struct Gateway {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn gateway(enclave: EnclaveAddress) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(wallet_host::serve_gateway(listener, enclave, "/data".into(), async {
        let _ = stopped.await;
    }));
    Gateway { url, _stop: stop }
}

fn error(code: ErrorCode, reason: &str, message: &str) -> Resp {
    Resp::Error(EnclaveError { code: code.into(), reason: reason.into(), message: message.into() })
}

/// The gateway's raw status for a `SignPayment` (to inspect metadata and details).
async fn sign_payment_status(url: &str, header_len: usize) -> tonic::Status {
    let mut cl = GatewayClient::connect(url).await.unwrap();
    let req =
        gw::SignPaymentRequest { payment_required: "a".repeat(header_len), ..Default::default() };
    cl.raw().sign_payment(req).await.unwrap_err()
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("enclave.sock")
}

#[tokio::test]
async fn relays_a_request_and_its_response() {
    let dir = tempfile::tempdir().unwrap();
    let seen = fake_enclave(
        &socket_in(&dir),
        Arc::new(|req| match req {
            Req::ListWallets(_) => Resp::Wallets(gw::ListWalletsResponse {
                wallets: vec![gw::Wallet {
                    wallet_id: "w_1".into(),
                    address: "0xabc".into(),
                    ..Default::default()
                }],
            }),
            other => panic!("unexpected {other:?}"),
        }),
    );
    let gw = gateway(format!("unix:{}", socket_in(&dir).display()).parse().unwrap()).await;
    let mut cl = GatewayClient::connect(&gw.url).await.unwrap();
    for _ in 0..3 {
        let l = cl.list_wallets(gw::ListWalletsRequest {}).await.unwrap();
        assert_eq!(l.wallets.len(), 1);
        assert_eq!(l.wallets[0].wallet_id, "w_1");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 3, "one connection, three frames");
}

#[tokio::test]
async fn enclave_errors_become_statuses_with_reason_metadata_and_error_info() {
    let dir = tempfile::tempdir().unwrap();
    fake_enclave(
        &socket_in(&dir),
        Arc::new(|req| match req {
            Req::SignPayment(r) if r.idempotency_key == "held" => {
                error(ErrorCode::FailedPrecondition, "APPROVAL_PENDING", "held for approval")
            }
            Req::SignPayment(_) => error(ErrorCode::Denied, "PER_TX_LIMIT", "0.50 is over 0.25"),
            Req::IssueSession(_) => error(ErrorCode::Unauthenticated, "UNKNOWN_ADMIN", "who?"),
            Req::GetPolicy(_) => error(ErrorCode::NotFound, "NOT_FOUND", "no wallet w_9"),
            _ => error(ErrorCode::Internal, "", "boom"),
        }),
    );
    let gw = gateway(EnclaveAddress::Unix(socket_in(&dir))).await;

    let s = sign_payment_status(&gw.url, 10).await;
    assert_eq!(s.code(), Code::PermissionDenied);
    assert_eq!(s.message(), "PER_TX_LIMIT: 0.50 is over 0.25");
    assert_eq!(s.metadata().get(REASON_METADATA).unwrap(), "PER_TX_LIMIT");
    let info = s.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("PER_TX_LIMIT", ERROR_DOMAIN));

    let mut cl = GatewayClient::connect(&gw.url).await.unwrap();
    let e = cl.sign_payment(gw::SignPaymentRequest::default()).await.unwrap_err();
    assert_eq!(
        (e.code(), e.reason(), e.exit_code()),
        (Code::PermissionDenied, Some(Reason::PerTxLimit), 3)
    );

    let held = gw::SignPaymentRequest { idempotency_key: "held".into(), ..Default::default() };
    let e = cl.sign_payment(held).await.unwrap_err();
    assert_eq!(
        (e.code(), e.reason(), e.exit_code()),
        (Code::FailedPrecondition, Some(Reason::ApprovalPending), 6)
    );

    let e = cl.issue_session(gw::IssueSessionRequest::default()).await.unwrap_err();
    assert_eq!(
        (e.code(), e.reason(), e.exit_code()),
        (Code::Unauthenticated, Some(Reason::UnknownAdmin), 4)
    );

    let e = cl.get_policy(gw::GetPolicyRequest { wallet_id: "w_9".into() }).await.unwrap_err();
    assert_eq!((e.code(), e.reason(), e.exit_code()), (Code::NotFound, Some(Reason::NotFound), 1));

    // An error without a reason still gets one.
    let e = cl.list_assets(gw::ListAssetsRequest {}).await.unwrap_err();
    assert_eq!((e.code(), e.reason()), (Code::Internal, Some(Reason::Internal)));
    assert_eq!(e.message(), "INTERNAL: boom");
}

#[tokio::test]
async fn an_unreachable_enclave_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(EnclaveAddress::Unix(dir.path().join("nobody.sock"))).await;
    let mut cl = GatewayClient::connect(&gw.url).await.unwrap();
    let e = cl.list_wallets(gw::ListWalletsRequest {}).await.unwrap_err();
    assert_eq!(
        (e.code(), e.reason(), e.exit_code()),
        (Code::Unavailable, Some(Reason::EnclaveUnavailable), 1)
    );
    assert!(e.message().contains("nobody.sock"), "{}", e.message());
    let s = cl.raw().list_wallets(gw::ListWalletsRequest {}).await.unwrap_err();
    assert_eq!(s.get_details_error_info().unwrap().reason, "ENCLAVE_UNAVAILABLE");
    // The gateway itself is up, and says the enclave is not.
    let st = cl.get_status(gw::GetStatusRequest {}).await.unwrap();
    assert!(!st.enclave_reachable);
    assert_eq!(st.data_dir, "/data");
}

#[tokio::test]
async fn an_oversized_payment_required_is_refused_before_relaying() {
    let dir = tempfile::tempdir().unwrap();
    let seen = fake_enclave(&socket_in(&dir), Arc::new(|_| panic!("must not be relayed")));
    let gw = gateway(EnclaveAddress::Unix(socket_in(&dir))).await;
    let s = sign_payment_status(&gw.url, wallet_policy::x402::MAX_HEADER_LEN + 1).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("HEADER_TOO_LARGE: "), "{}", s.message());
    assert_eq!(s.metadata().get(REASON_METADATA).unwrap(), "HEADER_TOO_LARGE");
    assert_eq!(s.get_details_error_info().unwrap().reason, "HEADER_TOO_LARGE");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_wrong_typed_answer_is_internal() {
    let dir = tempfile::tempdir().unwrap();
    fake_enclave(&socket_in(&dir), Arc::new(|_| Resp::Wallets(gw::ListWalletsResponse::default())));
    let gw = gateway(EnclaveAddress::Unix(socket_in(&dir))).await;
    let mut cl = GatewayClient::connect(&gw.url).await.unwrap();
    let e = cl.get_policy(gw::GetPolicyRequest { wallet_id: "w_1".into() }).await.unwrap_err();
    assert_eq!((e.code(), e.reason()), (Code::Internal, Some(Reason::Internal)));
    assert!(e.message().contains("wrong message"), "{}", e.message());
    let e = cl.get_status(gw::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
}

#[tokio::test]
async fn the_enclave_link_works_without_the_server() {
    let dir = tempfile::tempdir().unwrap();
    fake_enclave(
        &socket_in(&dir),
        Arc::new(|_| Resp::Status(gw::Status { wallets: 2, ..Default::default() })),
    );
    let link = EnclaveClient::new(socket_in(&dir));
    match link.call(Req::GetStatus(gw::GetStatusRequest {})).await.unwrap() {
        Resp::Status(s) => assert_eq!(s.wallets, 2),
        other => panic!("{other:?}"),
    }
}
