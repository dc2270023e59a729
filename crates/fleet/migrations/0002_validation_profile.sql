-- drivesec fleet store, schema 2: the profile a device was validated
-- against (file name and SHA-256 prefix), with each validation.
ALTER TABLE validations ADD COLUMN profile TEXT NOT NULL DEFAULT '';
