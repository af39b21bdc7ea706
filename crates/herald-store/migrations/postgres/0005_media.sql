-- The media library: files stored under the data dir (or object storage), described here.
CREATE TABLE media (
    id          UUID PRIMARY KEY,
    team_id     UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    filename    TEXT NOT NULL,
    mime        TEXT NOT NULL,                 -- sniffed from the content
    kind        TEXT NOT NULL,                 -- image or video
    bytes       BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    width       BIGINT,
    height      BIGINT,
    alt         TEXT,
    created_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX media_team ON media (team_id, created_at);
