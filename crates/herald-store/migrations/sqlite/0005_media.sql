-- The media library: files stored under the data dir (or object storage), described here.
CREATE TABLE media (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    filename    TEXT NOT NULL,
    mime        TEXT NOT NULL,                 -- sniffed from the content
    kind        TEXT NOT NULL,                 -- image or video
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    width       INTEGER,
    height      INTEGER,
    alt         TEXT,
    created_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX media_team ON media (team_id, created_at);
