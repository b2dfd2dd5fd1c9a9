-- DNSSEC zone keys. The private half is PKCS#8, or, when `encrypted` is 1,
-- nonce (12 octets) ‖ AES-256-GCM ciphertext ‖ tag under the operator's key
-- encryption key, with "opengslb-dnssec:" ‖ zone ‖ ":" ‖ key_tag as AAD.
CREATE TABLE IF NOT EXISTS dnssec_keys (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    zone             TEXT NOT NULL,      -- apex, lower-case, no final dot
    role             TEXT NOT NULL,      -- csk | ksk | zsk
    algorithm        INTEGER NOT NULL,   -- 13 or 15
    flags            INTEGER NOT NULL,   -- 257 or 256
    key_tag          INTEGER NOT NULL,
    public_key       BLOB NOT NULL,      -- DNSKEY form
    private_key      BLOB NOT NULL,
    encrypted        INTEGER NOT NULL,
    created_unix     INTEGER NOT NULL,
    state            TEXT NOT NULL DEFAULT 'active'  -- active | retired
);
CREATE INDEX IF NOT EXISTS dnssec_keys_zone ON dnssec_keys (zone, state);
