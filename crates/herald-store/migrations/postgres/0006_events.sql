-- Outgoing event webhooks and in-app notifications.
CREATE TABLE event_endpoints (
    id          UUID PRIMARY KEY,
    team_id     UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,                 -- sealed
    events      TEXT NOT NULL DEFAULT '[]',    -- JSON array; empty means every event
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT,
    created_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX event_endpoints_team ON event_endpoints (team_id);

CREATE TABLE notifications (
    id           UUID PRIMARY KEY,
    team_id      UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id   UUID NOT NULL,
    message      TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    read_at      TIMESTAMPTZ
);
CREATE INDEX notifications_team ON notifications (team_id, created_at);
