-- PostgreSQL twin of ../0003_overrides_geo.sql.
CREATE TABLE IF NOT EXISTS overrides (
    service            TEXT NOT NULL,
    address            TEXT NOT NULL,
    healthy            BOOLEAN NOT NULL,
    reason             TEXT NOT NULL,
    source             TEXT NOT NULL,
    authority          TEXT NOT NULL,
    created_at_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (service, address)
);

CREATE TABLE IF NOT EXISTS geo_mappings (
    cidr               TEXT PRIMARY KEY NOT NULL,
    region             TEXT NOT NULL,
    comment            TEXT NOT NULL,
    created_at_unix_ms BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at_unix_ms);
