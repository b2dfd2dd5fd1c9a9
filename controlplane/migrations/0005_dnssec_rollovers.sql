-- DNSSEC key rollovers (`opengslb dnssec rollover`), one row per rollover;
-- the zone's rollover in force is its row with the highest id. Phases and
-- timings: docs/dnssec.md / crate::dnssec::rollover.
CREATE TABLE IF NOT EXISTS dnssec_rollovers (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    zone               TEXT NOT NULL,      -- apex, lower-case, no final dot
    method             TEXT NOT NULL,      -- pre-publish | double-signature
    role               TEXT NOT NULL,      -- csk | ksk | zsk (the rolled key)
    old_key_tag        INTEGER NOT NULL,
    new_key_tag        INTEGER NOT NULL,
    phase              TEXT NOT NULL,      -- publish | sign | ds | retire | done | cancelled
    started_unix       INTEGER NOT NULL,
    phase_since_unix   INTEGER NOT NULL,
    next_unix          INTEGER NOT NULL,   -- when a timed phase ends; 0 = none
    ds_published_unix  INTEGER NOT NULL    -- operator confirmed the new DS; 0 = not yet
);
CREATE INDEX IF NOT EXISTS dnssec_rollovers_zone ON dnssec_rollovers (zone, id);
