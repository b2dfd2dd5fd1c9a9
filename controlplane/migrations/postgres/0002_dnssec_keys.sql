-- PostgreSQL twin of ../0002_dnssec_keys.sql.
CREATE TABLE IF NOT EXISTS dnssec_keys (
    id               BIGSERIAL PRIMARY KEY,
    zone             TEXT NOT NULL,
    role             TEXT NOT NULL,
    algorithm        BIGINT NOT NULL,
    flags            BIGINT NOT NULL,
    key_tag          BIGINT NOT NULL,
    public_key       BYTEA NOT NULL,
    private_key      BYTEA NOT NULL,
    encrypted        BIGINT NOT NULL,
    created_unix     BIGINT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'active'
);
CREATE INDEX IF NOT EXISTS dnssec_keys_zone ON dnssec_keys (zone, state);
