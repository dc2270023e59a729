-- drivesec fleet store, schema 1. Portable between SQLite and PostgreSQL:
-- TEXT and BIGINT only; times are RFC 3339 UTC text.
CREATE TABLE IF NOT EXISTS devices (
    name              TEXT PRIMARY KEY,
    serial            TEXT NOT NULL,
    api               TEXT NOT NULL,
    device_name       TEXT NOT NULL,
    zone              TEXT NOT NULL DEFAULT '',
    firmware_version  TEXT NOT NULL DEFAULT '',
    ldevid_not_after  TEXT NOT NULL DEFAULT '',
    tampered          BIGINT NOT NULL DEFAULT 0,
    campaign          TEXT,
    updated_at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS validations (
    id            BIGINT NOT NULL,
    device        TEXT NOT NULL REFERENCES devices(name),
    at            TEXT NOT NULL,
    passed        BIGINT NOT NULL,
    findings      BIGINT NOT NULL,
    evidence_sha  TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE IF NOT EXISTS campaigns (
    id          TEXT PRIMARY KEY,
    release     TEXT NOT NULL,
    operator    TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS campaign_devices (
    campaign  TEXT NOT NULL REFERENCES campaigns(id),
    device    TEXT NOT NULL REFERENCES devices(name),
    wave      BIGINT NOT NULL,
    state     TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (campaign, device)
);
CREATE INDEX IF NOT EXISTS campaign_devices_state ON campaign_devices (campaign, state);
