//! Adopting a state: the accounts, the TLS identity and the trust follow
//! a freshly loaded state directory, and every open connection is told.

use std::sync::Arc;

use drivesec_access::Accounts;
use drivesec_state::{LifeCycle, StateDir, files};

use super::{ConnInfo, Device};
use crate::{DeviceError, OrPoisoned, Result};

/// The trust open connections were admitted under. The device sends a new
/// one each time it adopts a state (commissioning, a CRL or trust-anchor
/// change, LDevID renewal, factory reset, the tamper response).
#[derive(Clone)]
pub(crate) struct Trust {
    /// 0 at start, one more for each state adopted.
    pub(crate) generation: u64,
    /// The check an open Modbus session's certificate must still pass; none
    /// when the device serves no Modbus (factory state). After the tamper
    /// response open sessions stay, for status reads only (docs/modbus.md).
    pub(crate) modbus: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// The owner's CRLs the state holds, which the audit forwarder checks
    /// the collector's certificate against (`super::forwarding`).
    pub(crate) crls: Arc<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>>,
}

impl Trust {
    /// Whether a connection was admitted under this trust (no state was
    /// adopted since its handshake).
    pub(crate) fn admits(&self, conn: &ConnInfo) -> bool {
        self.generation == conn.trust_generation
    }

    /// The trust of `st`, at generation 0 (`adopt_state` counts from there).
    pub(crate) fn of(st: &StateDir) -> Result<Trust> {
        Ok(Trust {
            generation: 0,
            modbus: if st.file.state == LifeCycle::Commissioned {
                Some(crate::tls::client_verifier(st)?)
            } else {
                None
            },
            crls: Arc::new(st.crl_ders()),
        })
    }
}

impl Device {
    /// Switches to a freshly loaded state: accounts, TLS identity and trust follow it.
    pub(crate) fn adopt_state(&self, st: StateDir) -> Result<()> {
        let config = self.config.read().or_poisoned("config")?.clone();
        let accounts = match st.file.state {
            LifeCycle::Commissioned => Some(
                Accounts::open(&st.path(files::ACCOUNTS), config.access.clone())
                    .map_err(|e| DeviceError::internal(e.to_string()))?,
            ),
            LifeCycle::Factory => None,
        };
        let tls_cfg = crate::tls::server_config(&st, &config.tls)?;
        let modbus_tls = crate::tls::modbus_config(&st, &config.modbus)?;
        let rights = super::settings::stored_modbus_rights(&st)?;
        let trust = Trust::of(&st)?;
        *self.modbus_tls.write().or_poisoned("modbus TLS")? = modbus_tls;
        *self.modbus_rights.write().or_poisoned("modbus rights")? = Arc::new(rights);
        *self.accounts.lock().or_poisoned("accounts")? = accounts;
        *self.tls.write().or_poisoned("TLS")? = tls_cfg;
        *self.state.write().or_poisoned("state")? = st;
        // Connections admitted under the old trust or identity: the API's
        // close, a Modbus session stays only if its certificate passes the
        // new check (docs/openapi.json, docs/modbus.md). One step of the
        // generation per adopted state, even when two are adopted at once.
        self.trust.send_modify(|t| {
            t.generation += 1;
            t.modbus = trust.modbus;
            t.crls = trust.crls;
        });
        // The forwarder signs its TLS handshakes with the identity it was
        // started with, which a renewal has just destroyed: a running
        // forwarder starts again under the state's identity (its cursor is
        // on disk, so nothing is lost or sent twice beyond the usual).
        let running = self.forwarder.lock().is_ok_and(|f| f.is_some());
        if running
            && let Ok(Some(s)) = self.forwarding_settings()
            && let Err(e) = self.start_forwarding(&s, false)
        {
            tracing::error!(%e, "restarting audit forwarding under the new identity");
        }
        Ok(())
    }
}
