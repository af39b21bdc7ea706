-- Outgoing event webhooks and in-app notifications.
CREATE TABLE event_endpoints (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,                 -- sealed
    events      TEXT NOT NULL DEFAULT '[]',    -- JSON array; empty means every event
    active      INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    created_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX event_endpoints_team ON event_endpoints (team_id);

CREATE TABLE notifications (
    id           BLOB PRIMARY KEY,
    team_id      BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id   BLOB NOT NULL,
    message      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    read_at      INTEGER
);
CREATE INDEX notifications_team ON notifications (team_id, created_at);
