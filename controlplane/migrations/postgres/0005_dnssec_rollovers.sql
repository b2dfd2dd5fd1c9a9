-- PostgreSQL twin of ../0005_dnssec_rollovers.sql.
CREATE TABLE IF NOT EXISTS dnssec_rollovers (
    id                 BIGSERIAL PRIMARY KEY,
    zone               TEXT NOT NULL,
    method             TEXT NOT NULL,
    role               TEXT NOT NULL,
    old_key_tag        BIGINT NOT NULL,
    new_key_tag        BIGINT NOT NULL,
    phase              TEXT NOT NULL,
    started_unix       BIGINT NOT NULL,
    phase_since_unix   BIGINT NOT NULL,
    next_unix          BIGINT NOT NULL,
    ds_published_unix  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS dnssec_rollovers_zone ON dnssec_rollovers (zone, id);
