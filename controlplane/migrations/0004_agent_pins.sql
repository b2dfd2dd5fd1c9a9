-- Agents pinned on first contact (TOFU): the SHA-256 fingerprint of the
-- certificate every later connection of that agent must present. A revoked
-- agent stays here, refused, until its row is deleted by hand.
CREATE TABLE IF NOT EXISTS agent_pins (
    agent_id           TEXT PRIMARY KEY NOT NULL,
    fingerprint        TEXT NOT NULL,      -- lower-case hex SHA-256 of the DER certificate
    region             TEXT NOT NULL,
    services           TEXT NOT NULL,      -- comma-separated services its token covered
    revoked            BOOLEAN NOT NULL,
    pinned_at_unix_ms  INTEGER NOT NULL,
    updated_at_unix_ms INTEGER NOT NULL
);
