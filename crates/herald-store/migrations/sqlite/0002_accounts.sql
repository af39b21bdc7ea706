-- Accounts, teams, access control and audit. Times are microseconds since the Unix epoch, UTC;
-- ids are UUIDv7 (16-byte blobs). Secrets are sealed by herald-vault ('hv1.<key id>.…') and every
-- other credential (passwords, session tokens, API keys, invite and reset tokens, recovery codes)
-- is stored only as a hash.

CREATE TABLE users (
    id                  BLOB PRIMARY KEY,
    email               TEXT NOT NULL UNIQUE,          -- lower-cased
    display_name        TEXT NOT NULL,
    password_hash       TEXT NOT NULL,                 -- Argon2id PHC string
    is_admin            INTEGER NOT NULL DEFAULT 0,    -- instance admin: sets quotas, sees every team
    disabled            INTEGER NOT NULL DEFAULT 0,
    totp_secret         TEXT,                          -- sealed; set at enrolment
    totp_enabled        INTEGER NOT NULL DEFAULT 0,    -- true once confirmed with a first code
    totp_last_step      INTEGER NOT NULL DEFAULT 0,    -- the last accepted time step: no replays
    created_at          INTEGER NOT NULL,
    password_changed_at INTEGER NOT NULL
);

CREATE TABLE recovery_codes (
    user_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE teams (
    id                   BLOB PRIMARY KEY,
    name                 TEXT NOT NULL,
    require_2fa          INTEGER NOT NULL DEFAULT 0,
    -- Quotas; NULL is unlimited (the self-hosted default). Set by an instance admin.
    quota_connections    INTEGER,
    quota_members        INTEGER,
    quota_posts_month    INTEGER,
    quota_ai_calls_month INTEGER,
    quota_media_bytes    INTEGER,
    created_at           INTEGER NOT NULL
);

CREATE TABLE memberships (
    team_id    BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL,                          -- owner | admin | editor | viewer
    created_at INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- Usage counted against monthly quotas: one row per team, metric and month ('2026-12').
CREATE TABLE team_usage (
    team_id BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    metric  TEXT NOT NULL,
    period  TEXT NOT NULL,
    used    INTEGER NOT NULL,
    PRIMARY KEY (team_id, metric, period)
);

CREATE TABLE sessions (
    id           BLOB PRIMARY KEY,
    token_hash   BLOB NOT NULL UNIQUE,                 -- SHA-256 of the cookie's 256-bit token
    csrf_hash    BLOB NOT NULL,                        -- SHA-256 of the CSRF token
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id      BLOB REFERENCES teams (id) ON DELETE SET NULL,  -- the team it acts in
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,                     -- absolute expiry
    ip           TEXT,
    user_agent   TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_keys (
    id           BLOB PRIMARY KEY,
    team_id      BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE,                 -- SHA-256 of the key
    prefix       TEXT NOT NULL,                        -- the first characters, to tell keys apart
    created_by   BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    expires_at   INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX api_keys_team ON api_keys (team_id);

CREATE TABLE invites (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    email       TEXT,                                  -- when set, only this address may accept
    role        TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    created_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    accepted_at INTEGER,
    accepted_by BLOB REFERENCES users (id) ON DELETE SET NULL,
    revoked_at  INTEGER
);
CREATE INDEX invites_team ON invites (team_id);

-- Single-use tokens: the first-run setup link and password resets.
CREATE TABLE auth_tokens (
    token_hash BLOB PRIMARY KEY,
    purpose    TEXT NOT NULL,                          -- setup | password_reset
    user_id    BLOB REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);

CREATE TABLE audit_events (
    id          BLOB PRIMARY KEY,                      -- UUIDv7: ordered by time
    team_id     BLOB REFERENCES teams (id) ON DELETE CASCADE,
    actor_user  BLOB,
    actor_key   BLOB,
    actor       TEXT NOT NULL,                         -- email, key name or 'system'
    action      TEXT NOT NULL,                         -- e.g. login.succeeded, api_key.revoked
    target_type TEXT,
    target_id   TEXT,
    ip          TEXT,
    details     TEXT NOT NULL DEFAULT '{}',            -- JSON
    created_at  INTEGER NOT NULL
);
CREATE INDEX audit_events_team ON audit_events (team_id, id);

-- Failed sign-ins per account ('account:<email>') and per address ('ip:<addr>').
CREATE TABLE login_throttle (
    key            TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    last_failed_at INTEGER NOT NULL,
    blocked_until  INTEGER NOT NULL
);
