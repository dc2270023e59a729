//! The SQLite engine: one file, WAL, writers serialised by immediate
//! transactions (a busy writer is waited for up to 10 s).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{
    CampaignDevice, DeviceRecord, DeviceState, FleetError, FleetStore, MIGRATIONS, Result,
    ValidationRecord, now,
};

pub(crate) struct SqliteStore {
    conn: Connection,
}

/// `$n` placeholders (shared with PostgreSQL) as SQLite's `?n`.
fn q(sql: &str) -> String {
    sql.replace('$', "?")
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        name: r.get(0)?,
        serial: r.get(1)?,
        api: r.get(2)?,
        device_name: r.get(3)?,
        zone: r.get(4)?,
        firmware_version: r.get(5)?,
        ldevid_not_after: r.get(6)?,
        tampered: r.get::<_, i64>(7)? != 0,
        campaign: r.get(8)?,
        boot_issue: r.get(9)?,
    })
}

pub(crate) const UPSERT: &str = "INSERT INTO devices (name, serial, api, device_name, zone, firmware_version, ldevid_not_after, tampered, updated_at, boot_issue)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (name) DO UPDATE SET serial = excluded.serial, api = excluded.api,
      device_name = excluded.device_name, zone = excluded.zone,
      firmware_version = excluded.firmware_version, ldevid_not_after = excluded.ldevid_not_after,
      tampered = excluded.tampered, updated_at = excluded.updated_at, boot_issue = excluded.boot_issue";

pub(crate) const DEVICE_COLUMNS: &str = "name, serial, api, device_name, zone, firmware_version, ldevid_not_after, tampered, campaign, boot_issue";

impl SqliteStore {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(SqliteStore { conn })
    }
}

impl FleetStore for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn migrate(&mut self) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
        )?;
        let have: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        let mut last = have;
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > have) {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES (?1)",
                params![v],
            )?;
            last = *v;
        }
        tx.commit()?;
        Ok(last)
    }

    fn upsert_device(&mut self, d: &DeviceRecord) -> Result<()> {
        self.upsert_devices(std::slice::from_ref(d))
    }

    fn upsert_devices(&mut self, ds: &[DeviceRecord]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(&q(UPSERT))?;
            let at = now();
            for d in ds {
                st.execute(params![
                    d.name,
                    d.serial,
                    d.api,
                    d.device_name,
                    d.zone,
                    d.firmware_version,
                    d.ldevid_not_after,
                    i64::from(d.tampered),
                    at,
                    d.boot_issue
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn device(&mut self, name: &str) -> Result<Option<DeviceRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE name = ?1"),
                params![name],
                device_row,
            )
            .optional()?)
    }

    fn devices(&mut self) -> Result<Vec<DeviceRecord>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name"
        ))?;
        let rows = st.query_map([], device_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn set_tampered(&mut self, name: &str, tampered: bool) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE devices SET tampered = ?1, updated_at = ?2 WHERE name = ?3",
            params![i64::from(tampered), now(), name],
        )?;
        if n == 0 {
            return Err(FleetError::Invalid(format!("no device '{name}'")));
        }
        Ok(())
    }

    fn record_validation(&mut self, v: &ValidationRecord) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(id), 0) + 1 FROM validations WHERE device = ?1",
            params![v.device],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO validations (id, device, at, passed, findings, evidence_sha, profile) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![next, v.device, v.at, i64::from(v.passed), v.findings, v.evidence_sha, v.profile],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn validations(&mut self, device: &str) -> Result<Vec<ValidationRecord>> {
        let mut st = self.conn.prepare(
            "SELECT device, at, passed, findings, evidence_sha, profile FROM validations WHERE device = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![device], |r| {
            Ok(ValidationRecord {
                device: r.get(0)?,
                at: r.get(1)?,
                passed: r.get::<_, i64>(2)? != 0,
                findings: r.get(3)?,
                evidence_sha: r.get(4)?,
                profile: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn create_campaign(&mut self, id: &str, release: &str, operator: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO campaigns (id, release, operator, state, created_at) VALUES (?1, ?2, ?3, 'running', ?4)",
            params![id, release, operator, now()],
        )?;
        Ok(())
    }

    fn claim(&mut self, campaign: &str, wave: i64, devices: &[String]) -> Result<Vec<String>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        let mut got = Vec::new();
        // Rows are locked in one global order (by name), so two claims
        // over overlapping sets cannot deadlock.
        let mut sorted: Vec<&String> = devices.iter().collect();
        sorted.sort();
        sorted.dedup();
        for d in sorted {
            let n = tx.execute(
                "UPDATE devices SET campaign = ?1, updated_at = ?2 WHERE name = ?3 AND campaign IS NULL",
                params![campaign, at, d],
            )?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO campaign_devices (campaign, device, wave, state, detail, updated_at) VALUES (?1, ?2, ?3, 'pending', '', ?4)",
                    params![campaign, d, wave, at],
                )?;
                got.push(d.clone());
            }
        }
        tx.commit()?;
        Ok(got)
    }

    fn set_state(
        &mut self,
        campaign: &str,
        device: &str,
        state: DeviceState,
        detail: &str,
    ) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE campaign_devices SET state = ?1, detail = ?2, updated_at = ?3 WHERE campaign = ?4 AND device = ?5",
            params![state.as_str(), detail, now(), campaign, device],
        )?;
        if n == 0 {
            return Err(FleetError::Invalid(format!(
                "device '{device}' is not in campaign '{campaign}'"
            )));
        }
        Ok(())
    }

    fn campaign_devices(&mut self, campaign: &str) -> Result<Vec<CampaignDevice>> {
        let mut st = self.conn.prepare(
            "SELECT device, wave, state, detail FROM campaign_devices WHERE campaign = ?1 ORDER BY wave, device",
        )?;
        let rows = st.query_map(params![campaign], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (device, wave, state, detail) = r?;
            Ok(CampaignDevice {
                device,
                wave,
                state: DeviceState::parse(&state)?,
                detail,
            })
        })
        .collect()
    }

    fn finish_campaign(&mut self, campaign: &str, state: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE devices SET campaign = NULL, updated_at = ?1 WHERE campaign = ?2",
            params![now(), campaign],
        )?;
        tx.execute(
            "UPDATE campaigns SET state = ?1 WHERE id = ?2",
            params![state, campaign],
        )?;
        tx.commit()?;
        Ok(())
    }
}
