-- PostgreSQL twin of ../0004_agent_pins.sql.
CREATE TABLE IF NOT EXISTS agent_pins (
    agent_id           TEXT PRIMARY KEY NOT NULL,
    fingerprint        TEXT NOT NULL,
    region             TEXT NOT NULL,
    services           TEXT NOT NULL,
    revoked            BOOLEAN NOT NULL,
    pinned_at_unix_ms  BIGINT NOT NULL,
    updated_at_unix_ms BIGINT NOT NULL
);
