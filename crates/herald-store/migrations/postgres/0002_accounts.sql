-- Accounts, teams, access control and audit. Times are timestamptz (UTC);
-- ids are UUIDv7 (uuid). Secrets are sealed by herald-vault ('hv1.<key id>.…') and every
-- other credential (passwords, session tokens, API keys, invite and reset tokens, recovery codes)
-- is stored only as a hash.

CREATE TABLE users (
    id                  UUID PRIMARY KEY,
    email               TEXT NOT NULL UNIQUE,          -- lower-cased
    display_name        TEXT NOT NULL,
    password_hash       TEXT NOT NULL,                 -- Argon2id PHC string
    is_admin            BOOLEAN NOT NULL DEFAULT FALSE, -- instance admin: sets quotas, sees every team
    disabled            BOOLEAN NOT NULL DEFAULT FALSE,
    totp_secret         TEXT,                          -- sealed; set at enrolment
    totp_enabled        BOOLEAN NOT NULL DEFAULT FALSE,    -- true once confirmed with a first code
    totp_last_step      BIGINT NOT NULL DEFAULT 0,    -- the last accepted time step: no replays
    created_at          TIMESTAMPTZ NOT NULL,
    password_changed_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE recovery_codes (
    user_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash BYTEA NOT NULL,
    used_at   TIMESTAMPTZ,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE teams (
    id                   UUID PRIMARY KEY,
    name                 TEXT NOT NULL,
    require_2fa          BOOLEAN NOT NULL DEFAULT FALSE,
    -- Quotas; NULL is unlimited (the self-hosted default). Set by an instance admin.
    quota_connections    BIGINT,
    quota_members        BIGINT,
    quota_posts_month    BIGINT,
    quota_ai_calls_month BIGINT,
    quota_media_bytes    BIGINT,
    created_at           TIMESTAMPTZ NOT NULL
);

CREATE TABLE memberships (
    team_id    UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL,                          -- owner | admin | editor | viewer
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- Usage counted against monthly quotas: one row per team, metric and month ('2026-12').
CREATE TABLE team_usage (
    team_id UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    metric  TEXT NOT NULL,
    period  TEXT NOT NULL,
    used    BIGINT NOT NULL,
    PRIMARY KEY (team_id, metric, period)
);

CREATE TABLE sessions (
    id           UUID PRIMARY KEY,
    token_hash   BYTEA NOT NULL UNIQUE,                 -- SHA-256 of the cookie's 256-bit token
    csrf_hash    BYTEA NOT NULL,                        -- SHA-256 of the CSRF token
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id      UUID REFERENCES teams (id) ON DELETE SET NULL,  -- the team it acts in
    created_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,                     -- absolute expiry
    ip           TEXT,
    user_agent   TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    team_id      UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    key_hash     BYTEA NOT NULL UNIQUE,                 -- SHA-256 of the key
    prefix       TEXT NOT NULL,                        -- the first characters, to tell keys apart
    created_by   UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_team ON api_keys (team_id);

CREATE TABLE invites (
    id          UUID PRIMARY KEY,
    team_id     UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    email       TEXT,                                  -- when set, only this address may accept
    role        TEXT NOT NULL,
    token_hash  BYTEA NOT NULL UNIQUE,
    created_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    accepted_at TIMESTAMPTZ,
    accepted_by UUID REFERENCES users (id) ON DELETE SET NULL,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX invites_team ON invites (team_id);

-- Single-use tokens: the first-run setup link and password resets.
CREATE TABLE auth_tokens (
    token_hash BYTEA PRIMARY KEY,
    purpose    TEXT NOT NULL,                          -- setup | password_reset
    user_id    UUID REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);

CREATE TABLE audit_events (
    id          UUID PRIMARY KEY,                      -- UUIDv7: ordered by time
    team_id     UUID REFERENCES teams (id) ON DELETE CASCADE,
    actor_user  UUID,
    actor_key   UUID,
    actor       TEXT NOT NULL,                         -- email, key name or 'system'
    action      TEXT NOT NULL,                         -- e.g. login.succeeded, api_key.revoked
    target_type TEXT,
    target_id   TEXT,
    ip          TEXT,
    details     TEXT NOT NULL DEFAULT '{}',            -- JSON
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_events_team ON audit_events (team_id, id);

-- Failed sign-ins per account ('account:<email>') and per address ('ip:<addr>').
CREATE TABLE login_throttle (
    key            TEXT PRIMARY KEY,
    failures       BIGINT NOT NULL,
    last_failed_at TIMESTAMPTZ NOT NULL,
    blocked_until  TIMESTAMPTZ NOT NULL
);
