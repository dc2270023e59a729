-- drivesec fleet store, schema 3: the last firmware problem a device's
-- boot stage reported (a corrupted or unconfirmed image it reverted from).
ALTER TABLE devices ADD COLUMN boot_issue TEXT NOT NULL DEFAULT '';
