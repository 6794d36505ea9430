//! The rollback anchor's flows: making the client key, provisioning (and re-anchoring), the
//! start-up check, the gate in front of every signature and state change, and its status. The
//! anchor itself is [`crate::anchor`].
//!
//! The start-up check requires, at the anchored counts, the audit log's hash, the spend
//! journal's chain hash and the state store's chain hash ([`crate::chain`]) to be the anchored
//! ones: a state assembled from stores (or records) of two different histories, each count high
//! enough, is refused. Nothing is written before that check passes.
//!
//! Provisioning is refused once wallets exist (unless re-anchoring): the anchor's configuration
//! lives in the sealed state, so a host that rolled the whole state back to before provisioning
//! would get an unanchored enclave — with nothing to spend only if no wallet existed then.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use wallet_proto::{enclave::v1::ErrorCode, gateway::v1 as gw, Reason};
use zeroize::Zeroizing;

use super::{auth::AdminAuthorized, records, Enclave, Failure, Result};
use crate::{
    anchor::{self, Anchor, AnchorConfig, CreateError, Head, Local, StartError, Verify},
    store::{Op, Table},
};

/// Record id of the anchor client key (an Ed25519 seed) in the key table.
const CLIENT_KEY_ID: &[u8] = b"anchor-client-key";
/// Record id of the anchor configuration in the anchor table.
const CONFIG_ID: &[u8] = b"config";

impl Enclave {
    /// The MAC key of anchored heads, derived from the identity key.
    fn anchor_mac_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(
            Sha256::new()
                .chain_update(b"x402-wallet/anchor-mac-key/v1\0")
                .chain_update(self.identity_key.to_bytes())
                .finalize()
                .into(),
        )
    }

    fn anchor_client_seed(&self) -> Result<Option<Zeroizing<[u8; 32]>>> {
        let Some(bytes) = self.state.get(Table::Keys, CLIENT_KEY_ID)? else { return Ok(None) };
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Failure::internal("anchor client key is not 32 bytes"))?;
        Ok(Some(Zeroizing::new(seed)))
    }

    fn anchor_client_public(seed: &[u8; 32]) -> String {
        let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key().to_bytes();
        hex::encode(anchor::ed25519_spki(&public))
    }

    pub(super) fn stored_anchor_config(&self) -> Result<Option<AnchorConfig>> {
        match self.state.get(Table::Anchor, CONFIG_ID)? {
            Some(v) => Ok(Some(records::from_json("anchor config", &v)?)),
            None => Ok(None),
        }
    }

    /// A new anchor (new client, new lineage) for `config`.
    fn build_anchor(&self, config: AnchorConfig) -> std::result::Result<Anchor, String> {
        let relays = self.anchor_relays.get().cloned().unwrap_or_default();
        if relays.len() != config.members as usize {
            return Err(format!(
                "the anchor has {} members but the enclave was given {} relays (--anchor-relay, one per member, in order)",
                config.members,
                relays.len()
            ));
        }
        let seed = self
            .anchor_client_seed()
            .map_err(|f| f.message)?
            .ok_or("the anchor client key is missing from the state")?;
        let setup = anchor::etcd::ClientSetup {
            relays,
            ca_pem: config.ca_pem.clone(),
            client_cert_pem: config.client_cert_pem.clone(),
            client_key_pkcs8: anchor::ed25519_pkcs8(&seed),
            server_name: config.server_name.clone(),
        };
        Anchor::new(
            config,
            setup,
            Self::anchor_client_public(&seed),
            self.anchor_mac_key(),
            self.entropy.bytes::<16>(),
        )
    }

    /// The local side of the start-up check: each store's hash at the head's count is the
    /// head's (the audit log's, the spend journal's chain, the state store's chain).
    fn verify_local(&self, head: &Head) -> std::result::Result<(), String> {
        let at = |what: &str, n: u64, local: Option<[u8; 32]>, anchored: [u8; 32]| match local {
            Some(h) if h == anchored => Ok(()),
            Some(_) => Err(format!("{what} differs from the anchored one at record {n}")),
            None => Err(format!("{what} cannot be checked at record {n}")),
        };
        at(
            "the audit log",
            head.facts.audit_records,
            self.audit.hash_at(head.facts.audit_records),
            head.chain,
        )?;
        at(
            "the spend journal",
            head.facts.journal_records,
            self.spend_log.chain_at(head.facts.journal_records),
            head.journal_chain,
        )?;
        at(
            "the state store",
            head.facts.store_seq,
            self.state.chain_at(head.facts.store_seq),
            head.state_chain,
        )
    }

    fn verifier(self: &Arc<Self>) -> Verify {
        let this = Arc::clone(self);
        Arc::new(move |head: &Head| this.verify_local(head))
    }

    /// At start-up, before serving: takes the relays (`--anchor-relay`) and, if this state is
    /// anchored, records this instance's lineage and runs the start-up check (in the background
    /// while the anchor is unreachable; until it passes, payments and state changes are
    /// refused).
    ///
    /// With `await_join` (`--await-join`, a host's choice: it can only withhold service) the
    /// stored anchor is not started: this process runs a copy of a group member's state, whose
    /// head it must not take over, until a join gives it a head of its own.
    pub async fn start_anchor(
        self: &Arc<Self>,
        relays: Vec<crate::hoststorage::HostAddress>,
        await_join: bool,
    ) {
        let _ = self.anchor_relays.set(relays);
        self.spawn_grant_sweeper();
        let config = match self.stored_anchor_config() {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::warn!("no rollback anchor: a host that restores an older copy of the whole state can spend again what was spent since (see ARCHITECTURE.md, The external anchor)");
                return;
            }
            Err(f) => {
                self.set_anchor_problem(format!(
                    "the anchor configuration cannot be read: {}",
                    f.message
                ));
                return;
            }
        };
        if await_join {
            self.awaiting_join.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!("anchor: started to join a group (--await-join): nothing is signed until the join is provisioned");
            self.set_anchor_problem("started to join a group (--await-join): nothing is signed or changed until this member's join is provisioned (walletctl anchor provision --join)".into());
            return;
        }
        let anchor = match self.build_anchor(config) {
            Ok(a) => Arc::new(a),
            Err(e) => {
                tracing::error!(error = %e, "anchor: cannot start; nothing is signed");
                self.set_anchor_problem(e);
                return;
            }
        };
        // In force before the check: until it passes, every round fails (nothing released).
        self.anchor.set(Arc::clone(&anchor));
        let local = match self.anchor_local().await {
            Ok(l) => l,
            Err(f) => {
                self.set_anchor_problem(f.message);
                return;
            }
        };
        match anchor.start(local, self.verifier()).await {
            Ok(()) => {}
            Err(StartError::Halted(why)) => {
                tracing::error!(reason = %why, "anchor: refusing to sign");
            }
            Err(StartError::Unavailable(why)) => {
                tracing::warn!(error = %why, "anchor: unreachable at start-up; refusing to sign until it answers");
                let a = Arc::clone(self);
                anchor.start_in_background(move || a.spend_log.last_round(), self.verifier());
            }
        }
    }

    /// Stops anchoring (the enclave is shutting down): later rounds fail at once, and a round in
    /// progress is waited for. Call while the runtime still runs.
    pub async fn stop_anchor(&self) {
        if let Some(anchor) = self.anchor.get() {
            anchor.close_and_wait().await;
        }
    }

    fn set_anchor_problem(&self, why: String) {
        if let Ok(mut p) = self.anchor_problem.lock() {
            *p = Some(why);
        }
    }

    /// Refuses unless this enclave may sign and change state: no anchor configured (the
    /// default), or the anchor serving.
    pub(super) fn anchor_gate(&self) -> Result<()> {
        if let Some(anchor) = self.anchor.get() {
            return anchor.gate().map_err(|(reason, why)| Failure::precondition(reason, why));
        }
        if self.anchor_required {
            let why = self
                .anchor_problem
                .lock()
                .ok()
                .and_then(|p| p.clone())
                .unwrap_or_else(|| "the anchor has not been started".into());
            return Err(Failure::precondition(
                Reason::AnchorUnavailable,
                format!("this state is anchored but the anchor cannot be used: {why}"),
            ));
        }
        Ok(())
    }

    pub(super) fn anchor_info(&self) -> gw::AnchorInfo {
        let mut info = self.anchor_info_without_local();
        if let Some(l) = self.spend_log.last_round() {
            info.local_journal_records = l.facts.journal_records;
            info.local_audit_records = l.facts.audit_records;
            info.local_store_seq = l.facts.store_seq;
        }
        info.local_audit_hash = hex::encode(self.audit.head().1);
        info
    }

    fn anchor_info_without_local(&self) -> gw::AnchorInfo {
        if let Some(a) = self.anchor.get() {
            return a.info();
        }
        let client_public_key = self
            .anchor_client_seed()
            .ok()
            .flatten()
            .map(|s| Self::anchor_client_public(&s))
            .unwrap_or_default();
        let state = if self.anchor_required {
            format!(
                "waiting: {}",
                self.anchor_problem
                    .lock()
                    .ok()
                    .and_then(|p| p.clone())
                    .unwrap_or_else(|| "not started".into())
            )
        } else {
            "none: no rollback protection of the whole state".into()
        };
        gw::AnchorInfo {
            configured: self.anchor_required,
            client_public_key,
            state,
            ..Default::default()
        }
    }

    /// `PrepareAnchor`: makes and seals the client key once; returns its public key.
    pub(super) async fn prepare_anchor(&self, _: &AdminAuthorized) -> Result<gw::AnchorInfo> {
        if self.anchor_client_seed()?.is_none() {
            let seed = Zeroizing::new(self.entropy.bytes::<32>());
            self.persist(vec![Op::Put(
                Table::Keys,
                CLIENT_KEY_ID.to_vec(),
                Zeroizing::new(seed.to_vec()),
            )])
            .await?;
            tracing::info!("anchor: client key made");
        }
        Ok(self.anchor_info())
    }

    /// `ProvisionAnchor`: configures the anchor and writes its first head (see the module docs).
    pub(super) async fn provision_anchor(
        &self,
        _: &AdminAuthorized,
        r: gw::ProvisionAnchorRequest,
    ) -> Result<gw::AnchorInfo> {
        let config = AnchorConfig {
            ca_pem: r.ca_certificate_pem,
            client_cert_pem: r.client_certificate_pem,
            server_name: r.server_name.trim().to_owned(),
            key: r.key.trim().to_owned(),
            members: r.members,
            shared_prefix: r.shared_prefix.trim().to_owned(),
        };
        config.check().map_err(Failure::bad_argument)?;
        if r.join && !r.reanchor {
            return Err(Failure::bad_argument("join needs reanchor: a member joining a group re-anchors a copy of another member's state under a head key of its own"));
        }
        let mut replace = if r.replace_head.is_empty() {
            None
        } else {
            if !r.reanchor {
                return Err(Failure::bad_argument("replace_head needs reanchor"));
            }
            Some(hex::decode(r.replace_head.trim()).map_err(|_| {
                Failure::bad_argument("replace_head must be the head's hex, as status shows it")
            })?)
        };
        let stored = self.stored_anchor_config()?;
        if !r.reanchor {
            if stored.is_some() {
                return Err(Failure::new(
                    ErrorCode::AlreadyExists,
                    Reason::AlreadyExists,
                    "the anchor is already provisioned (re-anchoring is a deliberate step: --reanchor)",
                ));
            }
            if !self.lock().wallets.is_empty() {
                return Err(Failure::precondition(
                    Reason::InvalidArgument,
                    "provision the anchor before creating wallets: its configuration lives in the state, so a host that restored a copy from before provisioning would get an enclave without rollback protection holding those wallets",
                ));
            }
        } else if let (Some(old), true) = (&stored, r.join) {
            // A new member: a copy of a member's state, which shares its budgets already (a
            // copy from before sharing began would not have them counted), taking a head of
            // its own under the same shared prefix. Copies of this state from before the join
            // carry the other member's key: they face that member's head.
            if old.shared_prefix.is_empty() || old.shared_prefix != config.shared_prefix {
                return Err(Failure::precondition(
                    Reason::InvalidArgument,
                    format!("joining a group needs a copy of a member's state that shares its budgets under the same prefix (this state's: {:?}): provision the first member with a shared prefix before creating wallets", old.shared_prefix),
                ));
            }
            if old.key == config.key || replace.is_some() {
                return Err(Failure::precondition(
                    Reason::InvalidArgument,
                    "a joining member takes a head key of its own, absent in etcd (the copied state's key is the other member's)",
                ));
            }
            if !self.awaiting_join.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Failure::precondition(
                    Reason::InvalidArgument,
                    "only a copy started to join (wallet-enclave --await-join) joins a group: this enclave runs its own anchor already",
                ));
            }
            if old.ca_pem != config.ca_pem || old.server_name != config.server_name {
                return Err(Failure::precondition(
                    Reason::InvalidArgument,
                    "a joining member uses the anchor (CA and server name) of the member it was copied from: the group's books live there",
                ));
            }
        } else if let Some(old) = &stored {
            // The old key's head would keep verifying for copies taken before a move.
            if old.shared_prefix != config.shared_prefix {
                return Err(Failure::precondition(
                    Reason::InvalidArgument,
                    "re-anchoring keeps the shared prefix: budgets shared under the old one would be forgotten",
                ));
            }
            if old.key != config.key {
                return Err(Failure::precondition(
                    Reason::InvalidArgument,
                    format!("re-anchoring keeps the anchor's key ({}): a head left at the old key would still vouch for copies of the state taken before the move", old.key),
                ));
            }
        } else if r.join {
            return Err(Failure::precondition(
                Reason::InvalidArgument,
                "this state was never anchored: a member joins with a copy of an anchored member's state",
            ));
        } else if !self.lock().wallets.is_empty() {
            return Err(Failure::precondition(
                Reason::InvalidArgument,
                "this state was never anchored: provision (without --reanchor) before creating wallets",
            ));
        }
        if self.anchor_client_seed()?.is_none() {
            return Err(Failure::precondition(
                Reason::NotFound,
                "no anchor client key yet: run PrepareAnchor (walletctl anchor provision does) and have the anchor CA certify it",
            ));
        }
        // A new client and lineage for the new configuration (a re-anchoring may bring a new
        // certificate); in force only once its head is written.
        let anchor = Arc::new(self.build_anchor(config.clone()).map_err(Failure::bad_argument)?);
        // Re-anchoring a serving enclave (a certificate renewal): the named head is one its
        // anchor wrote; retire that anchor (no more rounds) and replace what it wrote last,
        // which may be newer than the head the admin saw.
        if let (Some(current), Some(named)) = (self.anchor.get(), replace.as_deref()) {
            let ours = current.decode(named).is_ok_and(|h| h.lineage == current.lineage());
            if ours && current.phase() == anchor::Phase::Serving {
                if let Some((value, _)) = current.retire().await {
                    replace = Some(value);
                }
            }
        }
        // The head being replaced, if this enclave wrote it (under the new configuration or
        // the stored one): re-anchoring onto a state behind it or forked from it undoes what
        // was anchored since, so it needs `accept_older_state`.
        let mut epoch = 1;
        if let Some(old_value) = &replace {
            let mac_key = self.anchor_mac_key();
            let old_head = anchor.decode(old_value).ok().or_else(|| {
                stored.as_ref().and_then(|c| {
                    let binding = anchor::value::binding(&c.key, &c.ca_pem, &c.server_name);
                    Head::decode(old_value, &mac_key, &binding).ok()
                })
            });
            let current = self.anchor_local().await?;
            let verdict = match &old_head {
                None => Err("the head it replaces was not written by this enclave (or cannot be authenticated)".to_owned()),
                Some(h) => {
                    epoch = h.epoch.saturating_add(1);
                    behind_or_forked(current, h, &|h| self.verify_local(h))
                }
            };
            if let Err(why) = verdict {
                if !r.accept_older_state {
                    return Err(Failure::precondition(
                        Reason::AnchorHalted,
                        format!("re-anchoring would accept a state older than (or forked from) the head it replaces: {why}. If you mean to accept this enclave's state and undo what was anchored since, re-anchor with accept_older_state (walletctl --accept-older-state)"),
                    ));
                }
                let f = current.facts;
                let audit_hash = hex::encode(self.audit.head().1);
                if r.expect_journal_records != f.journal_records
                    || r.expect_audit_records != f.audit_records
                    || r.expect_store_seq > f.store_seq
                    || r.expect_audit_hash != audit_hash
                {
                    return Err(Failure::precondition(
                        Reason::InvalidArgument,
                        format!(
                            "this enclave's state ({} spend records, {} audit records ending in {audit_hash}, state batch {}) is not the one the acceptance names ({}, {} ending in {}, batch {}): the request reached another copy of the state than the one inspected. Nothing changed.",
                            f.journal_records, f.audit_records, f.store_seq, r.expect_journal_records, r.expect_audit_records, r.expect_audit_hash, r.expect_store_seq
                        ),
                    ));
                }
                tracing::warn!(reason = %why, "anchor: re-anchoring onto an older state, as the admin asked");
            }
        }
        if r.join {
            self.check_join_source(&anchor, stored.as_ref()).await?;
        }
        let local = self.anchor_local().await?;
        let head = anchor.create(local, epoch, replace).await.map_err(|e| match e {
            CreateError::Unavailable(m) => Failure::precondition(Reason::AnchorUnavailable, m),
            CreateError::Refused(m) => Failure::precondition(Reason::InvalidArgument, m),
        })?;
        self.anchor.set(Arc::clone(&anchor));
        self.awaiting_join.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(key = %config.key, epoch = head.epoch, journal = head.facts.journal_records, audit = head.facts.audit_records, reanchor = r.reanchor, "anchor: head written");
        self.persist(vec![Op::Put(Table::Anchor, CONFIG_ID.to_vec(), records::json(&config))])
            .await?;
        Ok(anchor.info())
    }

    /// A joining copy must hold the state the member it was copied from has anchored (its
    /// head, read now): not behind it, not forked from it — else a stale backup of a member
    /// (older policies, sessions, admins) would join the group.
    async fn check_join_source(
        &self,
        anchor: &Arc<Anchor>,
        source: Option<&AnchorConfig>,
    ) -> Result<()> {
        let source = source.ok_or_else(|| Failure::internal("join without a stored anchor"))?;
        let value = anchor
            .read_key(source.key.clone())
            .await
            .map_err(|e| Failure::precondition(Reason::AnchorUnavailable, e))?
            .ok_or_else(|| {
                Failure::precondition(
                    Reason::InvalidArgument,
                    format!(
                        "the member this state was copied from has no head at {}: nothing to join",
                        source.key
                    ),
                )
            })?;
        let binding = anchor::value::binding(&source.key, &source.ca_pem, &source.server_name);
        let head = Head::decode(&value, &self.anchor_mac_key(), &binding).map_err(|e| {
            Failure::precondition(
                Reason::InvalidArgument,
                format!("the head at {}: {e}", source.key),
            )
        })?;
        let local = self.anchor_local().await?;
        behind_or_forked(local, &head, &|h| self.verify_local(h)).map_err(|why| {
            Failure::precondition(
                Reason::AnchorHalted,
                format!("this copy is not the state the member it was copied from has anchored ({why}): a stale or forked copy does not join. Copy the member's current state (stopped) and join that"),
            )
        })
    }

    /// What the local stores hold durably now (runs a round first; its anchoring may fail, the
    /// local facts are recorded anyway).
    async fn anchor_local(&self) -> Result<Local> {
        let _ = self.spend_log.checkpoint().await;
        self.spend_log
            .last_round()
            .ok_or_else(|| Failure::internal("the commit head has not been written"))
    }
}

/// Whether `local` is behind `head` in a count, or not the history it anchored.
fn behind_or_forked(
    local: Local,
    head: &Head,
    verify: &dyn Fn(&Head) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let (a, l) = (head.facts, local.facts);
    if l.journal_records < a.journal_records
        || l.audit_records < a.audit_records
        || l.store_seq < a.store_seq
    {
        return Err(format!(
            "this enclave holds {} spend records, {} audit records, state batch {}; the head holds {}, {}, {}",
            l.journal_records, l.audit_records, l.store_seq, a.journal_records, a.audit_records, a.store_seq
        ));
    }
    verify(head)
}
