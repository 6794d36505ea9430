//! The anchor's etcd client: the KV service's `Range` and `Txn` (generated from
//! `proto/etcd/kv.proto`) over TLS that starts and ends in the enclave, carried by the host as
//! bytes through one relay per etcd member.
//!
//! Trust: the host picks nothing here but which bytes to pass. The server must present a
//! certificate chaining to the anchor CA the admin provisioned, for the provisioned server name
//! (webpki, no other root); the enclave authenticates with its own client certificate (its
//! Ed25519 key never leaves the enclave). TLS 1.3 only. Reads are linearizable (etcd's default;
//! `serializable` is never set), and every request carries etcd's `hasleader` metadata so a member
//! cut off from the leader answers with an error instead of waiting.
//!
//! Failover: one connection at a time, to one member. A transport error, a timeout or an
//! `Unavailable` answer drops it, and the next call connects to the next member (round robin over
//! the relays). Whether a write that failed took effect is for the caller to find out (the
//! anchor recognises its own values: see `super`).

use std::{sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

use crate::hoststorage::HostAddress;

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// How long one request to a member may take (connect, TLS handshake and answer included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// A value and its etcd `mod_revision`.
#[derive(Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value's bytes.
    pub value: Vec<u8>,
    /// etcd's `mod_revision` of the key.
    pub revision: i64,
}

impl std::fmt::Debug for Versioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versioned")
            .field("len", &self.value.len())
            .field("revision", &self.revision)
            .finish()
    }
}

/// The outcome of a compare-and-swap that reached etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// Written; the key's new `mod_revision`.
    Committed(i64),
    /// The comparison failed; what the key holds now (`None`: absent).
    Conflict(Option<Versioned>),
}

/// A failure that says nothing about whether a write took effect.
#[derive(Debug, thiserror::Error)]
#[error("etcd member {member}: {message}")]
pub struct EtcdError {
    /// Which member (relay index) was asked.
    pub member: usize,
    /// What went wrong (no secrets: etcd's status message or the transport's).
    pub message: String,
    /// etcd refused for lack of permission (RBAC): retrying cannot help.
    pub permission_denied: bool,
}

/// What the client needs: where the relays are and the TLS material.
pub struct ClientSetup {
    /// One relay per member, in order.
    pub relays: Vec<HostAddress>,
    /// The anchor CA (PEM): the only trust root.
    pub ca_pem: String,
    /// The enclave's client certificate (PEM).
    pub client_cert_pem: String,
    /// The client key: PKCS#8 DER (Ed25519).
    pub client_key_pkcs8: Zeroizing<Vec<u8>>,
    /// The name etcd's server certificates carry.
    pub server_name: String,
}

impl std::fmt::Debug for ClientSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSetup")
            .field("relays", &self.relays.len())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The client: a TLS configuration and the member it is talking to.
pub struct Kv {
    relays: Arc<Vec<HostAddress>>,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    current: tokio::sync::Mutex<Option<(usize, KvClient<Channel>)>>,
    next_member: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("members", &self.relays.len()).finish_non_exhaustive()
    }
}

/// Parses one or more PEM certificates.
///
/// # Errors
/// A sentence when the text holds no certificate or a malformed one.
pub fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no CERTIFICATE block"));
    }
    Ok(certs)
}

impl Kv {
    /// Builds the client (no connection yet).
    ///
    /// # Errors
    /// A sentence when the CA or the client certificate cannot be used, the key does not match
    /// the certificate, or the server name is not a DNS name.
    pub fn new(setup: ClientSetup) -> Result<Self, String> {
        if setup.relays.is_empty() {
            return Err("no anchor relay given (--anchor-relay): the host must carry the enclave's TLS to etcd".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates(&setup.ca_pem, "anchor CA")? {
            roots.add(ca).map_err(|e| format!("anchor CA: {e}"))?;
        }
        let chain = certificates(&setup.client_cert_pem, "anchor client certificate")?;
        let key =
            || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(setup.client_key_pkcs8.to_vec()));
        let signing = provider
            .key_provider
            .load_private_key(key())
            .map_err(|e| format!("anchor client key: {e}"))?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing).keys_match().map_err(|e| {
            format!("the anchor client certificate is not for this enclave's anchor key: {e}")
        })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key())
            .map_err(|e| format!("anchor client certificate: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(setup.server_name.clone())
            .map_err(|_| format!("anchor server name {:?} is not a DNS name", setup.server_name))?;
        Ok(Self {
            relays: Arc::new(setup.relays),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            current: tokio::sync::Mutex::new(None),
            next_member: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// How many members (relays) there are.
    #[must_use]
    pub fn members(&self) -> usize {
        self.relays.len()
    }

    /// The connected client, connecting to the next member if there is none.
    async fn client(&self) -> Result<(usize, KvClient<Channel>), EtcdError> {
        let mut current = self.current.lock().await;
        if let Some((m, c)) = current.as_ref() {
            return Ok((*m, c.clone()));
        }
        let member =
            self.next_member.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.relays.len();
        let relay = self.relays[member].clone();
        let tls = self.tls.clone();
        let name = self.server_name.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let relay = relay.clone();
            let tls = tls.clone();
            let name = name.clone();
            async move {
                let stream = crate::hoststorage::connect(&relay).await?;
                let stream = tls.connect(name, stream).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let err = |message: String| EtcdError { member, message, permission_denied: false };
        let endpoint = Endpoint::from_static("http://anchor.invalid")
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(REQUEST_TIMEOUT);
        let channel = endpoint.connect_with_connector(connector);
        let channel = tokio::time::timeout(REQUEST_TIMEOUT * 2, channel)
            .await
            .map_err(|_| err("connecting timed out".into()))?
            .map_err(|e| err(format!("connecting: {}", source_chain(&e))))?;
        let client = KvClient::new(channel);
        *current = Some((member, client.clone()));
        Ok((member, client))
    }

    /// Drops the connection to `member` (the next call tries the next member).
    async fn drop_member(&self, member: usize) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(m, _)| *m == member) {
            *current = None;
        }
    }

    async fn txn(&self, txn: TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        let (member, mut client) = self.client().await?;
        let mut request = tonic::Request::new(txn);
        request.set_timeout(REQUEST_TIMEOUT);
        request
            .metadata_mut()
            .insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        match tokio::time::timeout(
            REQUEST_TIMEOUT + Duration::from_millis(200),
            client.txn(request),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => {
                let permission_denied = status.code() == tonic::Code::PermissionDenied;
                if !permission_denied {
                    self.drop_member(member).await;
                }
                Err(EtcdError {
                    member,
                    message: format!("{:?}: {}", status.code(), status.message()),
                    permission_denied,
                })
            }
            Err(_) => {
                self.drop_member(member).await;
                Err(EtcdError { member, message: "timed out".into(), permission_denied: false })
            }
        }
    }

    /// A linearizable read of `key` (as a transaction with no comparison: one code path).
    ///
    /// # Errors
    /// [`EtcdError`] on any failure.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Versioned>, EtcdError> {
        let txn = TxnRequest { compare: vec![], success: vec![range(key)], failure: vec![] };
        let r = self.txn(txn).await?;
        Ok(first_kv(&r))
    }

    /// Writes `value` to `key` if the key's `mod_revision` is `expected` (`None`: only if the key
    /// does not exist); otherwise reads it back in the same transaction.
    ///
    /// # Errors
    /// [`EtcdError`] when the outcome is unknown (it may have been written).
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<i64>,
        value: &[u8],
    ) -> Result<Cas, EtcdError> {
        let compare = compare_revision(key, expected);
        let put = put(key, value);
        let txn =
            TxnRequest { compare: vec![compare], success: vec![put], failure: vec![range(key)] };
        let r = self.txn(txn).await?;
        if r.succeeded {
            let revision = r.header.as_ref().map_or(0, |h| h.revision);
            Ok(Cas::Committed(revision))
        } else {
            Ok(Cas::Conflict(first_kv(&r)))
        }
    }
}

/// One key a multi-key transaction writes ([`Kv::txn_put_all`]).
#[derive(Clone)]
pub struct Put {
    /// The key.
    pub key: Vec<u8>,
    /// Its `mod_revision` as last read (`None`: the key must not exist).
    pub expected: Option<i64>,
    /// What to write.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Put {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Put")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("expected", &self.expected)
            .field("len", &self.value.len())
            .finish()
    }
}

/// The outcome of a multi-key transaction that reached etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Multi {
    /// Every key written; etcd's revision after the write (each key's new `mod_revision`).
    Committed(i64),
    /// A comparison failed: what the guard key and each key hold now, in order (`None`: absent).
    Conflict {
        /// The guard key (the head).
        guard: Option<Versioned>,
        /// The written keys, in the order given.
        keys: Vec<Option<Versioned>>,
    },
}

fn compare_revision(key: &[u8], expected: Option<i64>) -> Compare {
    match expected {
        Some(rev) => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::ModRevision(rev)),
            range_end: vec![],
        },
        None => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: vec![],
        },
    }
}

fn put(key: &[u8], value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease: 0,
            prev_kv: false,
        })),
    }
}

impl Kv {
    /// One transaction: if `guard` (a key this caller does not write, the head) still has
    /// `mod_revision` `guard_revision` and every key of `puts` still has its expected
    /// revision, writes them all; otherwise reads the guard and every key back, in the same
    /// transaction. All or nothing: etcd applies a transaction atomically.
    ///
    /// # Errors
    /// [`EtcdError`] when the outcome is unknown (it may have been written).
    pub async fn txn_put_all(
        &self,
        guard: &[u8],
        guard_revision: i64,
        puts: &[Put],
    ) -> Result<Multi, EtcdError> {
        let mut compare = vec![compare_revision(guard, Some(guard_revision))];
        compare.extend(puts.iter().map(|p| compare_revision(&p.key, p.expected)));
        let success = puts.iter().map(|p| put(&p.key, &p.value)).collect();
        let mut failure = vec![range(guard)];
        failure.extend(puts.iter().map(|p| range(&p.key)));
        let r = self.txn(TxnRequest { compare, success, failure }).await?;
        if r.succeeded {
            return Ok(Multi::Committed(r.header.as_ref().map_or(0, |h| h.revision)));
        }
        let mut values = r.responses.iter().map(read_of);
        let guard = values.next().flatten();
        let keys: Vec<_> = values.collect();
        if keys.len() != puts.len() {
            return Err(EtcdError {
                member: usize::MAX,
                message: format!(
                    "etcd answered a failed transaction with {} reads for {} keys",
                    keys.len() + 1,
                    puts.len() + 1
                ),
                permission_denied: false,
            });
        }
        Ok(Multi::Conflict { guard, keys })
    }

    /// Linearizable reads of several keys in one transaction, in order (`None`: absent).
    ///
    /// # Errors
    /// [`EtcdError`] on any failure.
    pub async fn get_all(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Versioned>>, EtcdError> {
        let txn = TxnRequest {
            compare: vec![],
            success: keys.iter().map(|k| range(k)).collect(),
            failure: vec![],
        };
        let r = self.txn(txn).await?;
        Ok(r.responses.iter().map(read_of).collect())
    }
}

fn range(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            range_end: vec![],
            limit: 1,
            revision: 0,
            serializable: false,
        })),
    }
}

fn first_kv(r: &pb::TxnResponse) -> Option<Versioned> {
    r.responses.iter().find_map(read_of)
}

/// What a range answer in a transaction read (`None`: the key is absent, or not a range).
fn read_of(op: &pb::ResponseOp) -> Option<Versioned> {
    match &op.response {
        Some(response_op::Response::ResponseRange(range)) => range
            .kvs
            .first()
            .map(|kv| Versioned { value: kv.value.clone(), revision: kv.mod_revision }),
        _ => None,
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
