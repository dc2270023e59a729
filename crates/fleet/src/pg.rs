//! The PostgreSQL engine: the same schema and migrations; a device is
//! claimed by an `UPDATE ... WHERE campaign IS NULL`, whose row lock makes
//! a concurrent claim of the same device wait and then find it taken.

use postgres::{Client, NoTls};

use crate::sqlite::{DEVICE_COLUMNS, UPSERT};
use crate::{
    CampaignDevice, DeviceRecord, DeviceState, FleetError, FleetStore, MIGRATIONS, Result,
    ValidationRecord, now,
};

pub(crate) struct PgStore {
    client: Client,
}

impl PgStore {
    pub(crate) fn connect(url: &str) -> Result<Self> {
        // Loopback or a private network: TLS to the database is the
        // deployment's business (a later issue), not this store's.
        Ok(PgStore {
            client: Client::connect(url, NoTls)?,
        })
    }
}

fn device_row(r: &postgres::Row) -> DeviceRecord {
    DeviceRecord {
        name: r.get(0),
        serial: r.get(1),
        api: r.get(2),
        device_name: r.get(3),
        zone: r.get(4),
        firmware_version: r.get(5),
        ldevid_not_after: r.get(6),
        tampered: r.get::<_, i64>(7) != 0,
        campaign: r.get(8),
        boot_issue: r.get(9),
    }
}

impl FleetStore for PgStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn migrate(&mut self) -> Result<i64> {
        let mut tx = self.client.transaction()?;
        // One migrator at a time across connections.
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(802001); CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
        )?;
        let have: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )?
            .get(0);
        let mut last = have;
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > have) {
            tx.batch_execute(sql)?;
            tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[v])?;
            last = *v;
        }
        tx.commit()?;
        Ok(last)
    }

    fn upsert_device(&mut self, d: &DeviceRecord) -> Result<()> {
        self.upsert_devices(std::slice::from_ref(d))
    }

    fn upsert_devices(&mut self, ds: &[DeviceRecord]) -> Result<()> {
        let mut tx = self.client.transaction()?;
        let st = tx.prepare(UPSERT)?;
        let at = now();
        for d in ds {
            tx.execute(
                &st,
                &[
                    &d.name,
                    &d.serial,
                    &d.api,
                    &d.device_name,
                    &d.zone,
                    &d.firmware_version,
                    &d.ldevid_not_after,
                    &i64::from(d.tampered),
                    &at,
                    &d.boot_issue,
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn device(&mut self, name: &str) -> Result<Option<DeviceRecord>> {
        Ok(self
            .client
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE name = $1"),
                &[&name],
            )?
            .map(|r| device_row(&r)))
    }

    fn devices(&mut self) -> Result<Vec<DeviceRecord>> {
        Ok(self
            .client
            .query(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name"),
                &[],
            )?
            .iter()
            .map(device_row)
            .collect())
    }

    fn set_tampered(&mut self, name: &str, tampered: bool) -> Result<()> {
        let n = self.client.execute(
            "UPDATE devices SET tampered = $1, updated_at = $2 WHERE name = $3",
            &[&i64::from(tampered), &now(), &name],
        )?;
        if n == 0 {
            return Err(FleetError::Invalid(format!("no device '{name}'")));
        }
        Ok(())
    }

    fn record_validation(&mut self, v: &ValidationRecord) -> Result<()> {
        let mut tx = self.client.transaction()?;
        // Serialise numbering per device on the device's row.
        tx.execute(
            "SELECT 1 FROM devices WHERE name = $1 FOR UPDATE",
            &[&v.device],
        )?;
        let next: i64 = tx
            .query_one(
                "SELECT (COALESCE(MAX(id), 0) + 1)::BIGINT FROM validations WHERE device = $1",
                &[&v.device],
            )?
            .get(0);
        tx.execute(
            "INSERT INTO validations (id, device, at, passed, findings, evidence_sha, profile) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&next, &v.device, &v.at, &i64::from(v.passed), &v.findings, &v.evidence_sha, &v.profile],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn validations(&mut self, device: &str) -> Result<Vec<ValidationRecord>> {
        Ok(self
            .client
            .query(
                "SELECT device, at, passed, findings, evidence_sha, profile FROM validations WHERE device = $1 ORDER BY id",
                &[&device],
            )?
            .iter()
            .map(|r| ValidationRecord {
                device: r.get(0),
                at: r.get(1),
                passed: r.get::<_, i64>(2) != 0,
                findings: r.get(3),
                evidence_sha: r.get(4),
                profile: r.get(5),
            })
            .collect())
    }

    fn create_campaign(&mut self, id: &str, release: &str, operator: &str) -> Result<()> {
        self.client.execute(
            "INSERT INTO campaigns (id, release, operator, state, created_at) VALUES ($1, $2, $3, 'running', $4)",
            &[&id, &release, &operator, &now()],
        )?;
        Ok(())
    }

    fn claim(&mut self, campaign: &str, wave: i64, devices: &[String]) -> Result<Vec<String>> {
        let mut tx = self.client.transaction()?;
        let at = now();
        let mut got = Vec::new();
        // Rows are locked in one global order (by name), so two claims
        // over overlapping sets cannot deadlock.
        let mut sorted: Vec<&String> = devices.iter().collect();
        sorted.sort();
        sorted.dedup();
        for d in sorted {
            let n = tx.execute(
                "UPDATE devices SET campaign = $1, updated_at = $2 WHERE name = $3 AND campaign IS NULL",
                &[&campaign, &at, &d],
            )?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO campaign_devices (campaign, device, wave, state, detail, updated_at) VALUES ($1, $2, $3, 'pending', '', $4)",
                    &[&campaign, &d, &wave, &at],
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
        let n = self.client.execute(
            "UPDATE campaign_devices SET state = $1, detail = $2, updated_at = $3 WHERE campaign = $4 AND device = $5",
            &[&state.as_str(), &detail, &now(), &campaign, &device],
        )?;
        if n == 0 {
            return Err(FleetError::Invalid(format!(
                "device '{device}' is not in campaign '{campaign}'"
            )));
        }
        Ok(())
    }

    fn campaign_devices(&mut self, campaign: &str) -> Result<Vec<CampaignDevice>> {
        self.client
            .query(
                "SELECT device, wave, state, detail FROM campaign_devices WHERE campaign = $1 ORDER BY wave, device",
                &[&campaign],
            )?
            .iter()
            .map(|r| {
                Ok(CampaignDevice {
                    device: r.get(0),
                    wave: r.get(1),
                    state: DeviceState::parse(r.get(2))?,
                    detail: r.get(3),
                })
            })
            .collect()
    }

    fn finish_campaign(&mut self, campaign: &str, state: &str) -> Result<()> {
        let mut tx = self.client.transaction()?;
        tx.execute(
            "UPDATE devices SET campaign = NULL, updated_at = $1 WHERE campaign = $2",
            &[&now(), &campaign],
        )?;
        tx.execute(
            "UPDATE campaigns SET state = $1 WHERE id = $2",
            &[&state, &campaign],
        )?;
        tx.commit()?;
        Ok(())
    }
}
