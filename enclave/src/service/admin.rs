//! The admin set: add (the first admin registers itself on a fresh enclave), remove (never the
//! last), list.

use wallet_proto::{enclave::v1::ErrorCode, gateway::v1 as gw, Reason};

use super::{
    auth::AdminAuthorized,
    ed25519_key,
    records::{json, AdminRecord},
    wire::admin_proto,
    Enclave, Failure, Result,
};
use crate::store::{Op, Table};

impl Enclave {
    pub(super) async fn add_admin(
        &self,
        _: &AdminAuthorized,
        r: gw::AddAdminRequest,
    ) -> Result<gw::Admin> {
        let pk = ed25519_key(&r.public_key, "admin public key")?.to_bytes();
        if self.lock().admins.contains_key(&pk) {
            return Err(Failure::new(
                ErrorCode::AlreadyExists,
                Reason::AlreadyExists,
                "that key is already an admin",
            ));
        }
        // A self-registered first admin starts at the timestamp it registered with.
        let last_ts =
            r.auth.as_ref().filter(|a| a.public_key == r.public_key).map_or(0, |a| a.timestamp_ms);
        let record = AdminRecord {
            label: r.label.trim().to_owned(),
            added_at: self.clock.now().as_secs(),
            last_ts,
        };
        self.persist(vec![Op::Put(Table::Admins, pk.to_vec(), json(&record))]).await?;
        tracing::info!(admin = %hex::encode(&pk[..8]), "admin added");
        let out = admin_proto(&pk, &record);
        self.lock().admins.insert(pk, record);
        Ok(out)
    }

    pub(super) async fn remove_admin(
        &self,
        _: &AdminAuthorized,
        public_key: &[u8],
    ) -> Result<gw::Admin> {
        let pk: [u8; 32] = public_key.try_into().map_err(|_| {
            Failure::invalid(Reason::InvalidPublicKey, "admin public key must be 32 bytes")
        })?;
        let record = {
            let inner = self.lock();
            let record = inner
                .admins
                .get(&pk)
                .cloned()
                .ok_or_else(|| Failure::not_found("that key is not an admin"))?;
            if inner.admins.len() == 1 {
                return Err(Failure::precondition(
                    Reason::LastAdmin,
                    "cannot remove the last admin: add another one first",
                ));
            }
            record
        };
        self.persist(vec![Op::Delete(Table::Admins, pk.to_vec())]).await?;
        self.lock().admins.remove(&pk);
        tracing::info!(admin = %hex::encode(&pk[..8]), "admin removed");
        Ok(admin_proto(&pk, &record))
    }

    pub(super) fn list_admins(&self) -> gw::ListAdminsResponse {
        let inner = self.lock();
        let mut admins: Vec<_> = inner.admins.iter().map(|(pk, r)| admin_proto(pk, r)).collect();
        admins.sort_by_key(|a| (a.added_at, a.public_key.clone()));
        gw::ListAdminsResponse { admins }
    }
}
