-- Skychimp storage, PostgreSQL flavour. Same tables and meaning as the SQLite one;
-- timestamps are TIMESTAMPTZ.

-- One occurrence of one mailing (or one `skychimpd send`). The message and the version of
-- the mailing are fixed at creation. UNIQUE(mailing_id, occurrence) makes creation
-- idempotent across several daemons.
CREATE TABLE runs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailing_id   TEXT        NOT NULL,
    owner        TEXT        NOT NULL,
    occurrence   TIMESTAMPTZ NOT NULL,
    kind         TEXT        NOT NULL CHECK (kind IN ('scheduled', 'manual')),
    created_at   TIMESTAMPTZ NOT NULL,
    mailing_blob TEXT        NOT NULL,
    head_commit  TEXT,
    subject      TEXT        NOT NULL,
    body         TEXT        NOT NULL,
    recipients   BIGINT      NOT NULL DEFAULT 0,
    finished_at  TIMESTAMPTZ,
    UNIQUE (mailing_id, occurrence)
);
CREATE INDEX runs_owner ON runs (owner);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;

-- One recipient of one run. UNIQUE(run_id, address) is what guarantees that a recipient
-- never gets one run twice; `address` is the lowercased key, `email` the address as written.
-- fillfactor leaves room on each page so that claiming (which changes no indexed column)
-- can be a HOT update.
CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          BIGINT      NOT NULL REFERENCES runs (id),
    address         TEXT        NOT NULL,
    email           TEXT        NOT NULL,
    name            TEXT        NOT NULL,
    comment         TEXT,
    status          TEXT        NOT NULL CHECK (status IN
                        ('queued', 'sending', 'sent', 'failed', 'deferred', 'skipped', 'unknown')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    last_code       INTEGER,
    last_reply      TEXT,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (run_id, address)
) WITH (fillfactor = 80);
-- What `claim` scans: due work only.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id)
    WHERE status IN ('queued', 'deferred');
-- What `recover_interrupted` scans: the few rows in flight.
CREATE INDEX deliveries_sending ON deliveries (id) WHERE status = 'sending';

-- The log: one row per SMTP attempt (and per interrupted one). Denormalised (run, mailing,
-- address) so the manager's log pages read one table.
CREATE TABLE attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id BIGINT      NOT NULL,
    run_id      BIGINT      NOT NULL,
    mailing_id  TEXT        NOT NULL,
    address     TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    outcome     TEXT        NOT NULL CHECK (outcome IN ('sent', 'failed', 'deferred', 'unknown')),
    smtp_code   INTEGER,
    reply       TEXT        NOT NULL,
    duration_ms BIGINT      NOT NULL
);
CREATE INDEX attempts_mailing ON attempts (mailing_id, id);
CREATE INDEX attempts_sent_at ON attempts (at) WHERE outcome = 'sent';

-- What the daemon knows about a user beyond users.toml: verification and manager blocks.
CREATE TABLE user_state (
    user_id              TEXT PRIMARY KEY,
    verified_email       TEXT,
    verified_at          TIMESTAMPTZ,
    verification_email   TEXT,
    verification_nonce   TEXT,
    verification_sent_at TIMESTAMPTZ,
    blocked              BOOLEAN     NOT NULL DEFAULT FALSE,
    blocked_reason       TEXT,
    updated_at           TIMESTAMPTZ NOT NULL
);

-- Manager's switch per mailing (the owner's own `enabled` lives in git).
CREATE TABLE mailing_state (
    mailing_id TEXT PRIMARY KEY,
    disabled   BOOLEAN     NOT NULL DEFAULT FALSE,
    reason     TEXT,
    updated_at TIMESTAMPTZ NOT NULL
);

-- A client who left an owner's mailings; `address` is the lowercased key.
CREATE TABLE unsubscribes (
    owner      TEXT        NOT NULL,
    address    TEXT        NOT NULL,
    mailing_id TEXT,
    at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner, address)
);

-- One row per manager action.
CREATE TABLE audit (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     TIMESTAMPTZ NOT NULL,
    key_id TEXT        NOT NULL,
    action TEXT        NOT NULL,
    target TEXT        NOT NULL,
    reason TEXT,
    peer   TEXT
);
