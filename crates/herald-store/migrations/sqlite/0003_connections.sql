-- Platform connections: one account on one platform, owned by a team. The credentials are sealed
-- by herald-vault (hv1.<key id>.<…>) with the row's team and id as associated data.
CREATE TABLE connections (
    id               BLOB PRIMARY KEY,
    team_id          BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    platform         TEXT NOT NULL,
    name             TEXT NOT NULL,
    account          TEXT NOT NULL,                 -- the account as the platform names it
    status           TEXT NOT NULL CHECK (status IN ('active', 'needs_reauth', 'error')),
    settings         TEXT NOT NULL,                 -- JSON, never secret
    credentials      TEXT NOT NULL,                 -- sealed JSON
    last_error       TEXT,
    last_error_class TEXT,
    last_error_at    INTEGER,
    verified_at      INTEGER,
    created_by       BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX connections_team ON connections (team_id, created_at);
