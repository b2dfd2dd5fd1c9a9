-- Manual health overrides: one per (service, address). They outrank every
-- other health signal and survive restarts.
CREATE TABLE IF NOT EXISTS overrides (
    service            TEXT NOT NULL,      -- domain name, lower-case, no final dot
    address            TEXT NOT NULL,      -- IP, or IP:port
    healthy            BOOLEAN NOT NULL,
    reason             TEXT NOT NULL,
    source             TEXT NOT NULL,      -- the system that set it
    authority          TEXT NOT NULL,      -- who (token identity) and from where
    created_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (service, address)
);

-- Geolocation: CIDR → region mappings added at run time (API/CLI).
CREATE TABLE IF NOT EXISTS geo_mappings (
    cidr               TEXT PRIMARY KEY NOT NULL,  -- canonical network form
    region             TEXT NOT NULL,
    comment            TEXT NOT NULL,
    created_at_unix_ms INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at_unix_ms);
