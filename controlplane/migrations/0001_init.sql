-- Controlplane state that must survive a restart.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Every change made through the controlplane: who, what, when, from where.
CREATE TABLE IF NOT EXISTS audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix_ms INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    source     TEXT NOT NULL,
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL
);
