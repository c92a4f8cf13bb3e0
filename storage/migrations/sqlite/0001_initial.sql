-- Skychimp storage, SQLite flavour. Timestamps are INTEGER unix milliseconds (UTC):
-- sortable, exact, and free of SQLite's text-date ambiguity.

-- One occurrence of one mailing (or one `skychimpd send`). The message and the version of
-- the mailing are fixed at creation. UNIQUE(mailing_id, occurrence) makes creation
-- idempotent across several daemons.
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    mailing_id   TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    occurrence   INTEGER NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('scheduled', 'manual')),
    created_at   INTEGER NOT NULL,
    mailing_blob TEXT    NOT NULL,
    head_commit  TEXT,
    subject      TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    recipients   INTEGER NOT NULL DEFAULT 0,
    finished_at  INTEGER,
    UNIQUE (mailing_id, occurrence)
);
CREATE INDEX runs_owner ON runs (owner);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;

-- One recipient of one run. UNIQUE(run_id, address) is what guarantees that a recipient
-- never gets one run twice; `address` is the lowercased key, `email` the address as written.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    address         TEXT    NOT NULL,
    email           TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    comment         TEXT,
    status          TEXT    NOT NULL CHECK (status IN
                        ('queued', 'sending', 'sent', 'failed', 'deferred', 'skipped', 'unknown')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_code       INTEGER,
    last_reply      TEXT,
    updated_at      INTEGER NOT NULL,
    UNIQUE (run_id, address)
);
-- What `claim` scans: due work only.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id)
    WHERE status IN ('queued', 'deferred');
-- What `recover_interrupted` scans: the few rows in flight.
CREATE INDEX deliveries_sending ON deliveries (id) WHERE status = 'sending';

-- The log: one row per SMTP attempt (and per interrupted one). Denormalised (run, mailing,
-- address) so the manager's log pages read one table.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL,
    run_id      INTEGER NOT NULL,
    mailing_id  TEXT    NOT NULL,
    address     TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('sent', 'failed', 'deferred', 'unknown')),
    smtp_code   INTEGER,
    reply       TEXT    NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX attempts_mailing ON attempts (mailing_id, id);
CREATE INDEX attempts_sent_at ON attempts (at) WHERE outcome = 'sent';

-- What the daemon knows about a user beyond users.toml: verification and manager blocks.
CREATE TABLE user_state (
    user_id              TEXT PRIMARY KEY,
    verified_email       TEXT,
    verified_at          INTEGER,
    verification_email   TEXT,
    verification_nonce   TEXT,
    verification_sent_at INTEGER,
    blocked              INTEGER NOT NULL DEFAULT 0,
    blocked_reason       TEXT,
    updated_at           INTEGER NOT NULL
);

-- Manager's switch per mailing (the owner's own `enabled` lives in git).
CREATE TABLE mailing_state (
    mailing_id TEXT PRIMARY KEY,
    disabled   INTEGER NOT NULL DEFAULT 0,
    reason     TEXT,
    updated_at INTEGER NOT NULL
);

-- A client who left an owner's mailings; `address` is the lowercased key.
CREATE TABLE unsubscribes (
    owner      TEXT    NOT NULL,
    address    TEXT    NOT NULL,
    mailing_id TEXT,
    at         INTEGER NOT NULL,
    PRIMARY KEY (owner, address)
);

-- One row per manager action.
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    key_id TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    reason TEXT,
    peer   TEXT
);
