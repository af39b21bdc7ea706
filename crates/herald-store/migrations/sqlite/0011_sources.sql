-- Sources (where new content comes from) and the events they produce.
CREATE TABLE sources (
    id            BLOB PRIMARY KEY,
    team_id       BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,                 -- youtube_channel | feed | schedule | webhook | manual
    name          TEXT NOT NULL,
    config        TEXT NOT NULL,                 -- JSON, normalised per kind
    secret        TEXT,                          -- sealed: the WebSub hub.secret or the webhook secret
    active        INTEGER NOT NULL DEFAULT 1,
    deleted       INTEGER NOT NULL DEFAULT 0,    -- gone from the API, kept while the hub unsubscribes
    next_run_at   INTEGER,                       -- the next poll or firing
    lease_until   INTEGER,                       -- a node is polling it until then
    etag          TEXT,
    last_modified TEXT,
    body_hash     TEXT,                          -- the last body's SHA-256: an unchanged 200 is not parsed
    baselined     INTEGER NOT NULL DEFAULT 0,    -- the first poll has remembered what already existed
    failures      INTEGER NOT NULL DEFAULT 0,    -- consecutive failed polls
    last_run_at   INTEGER,
    last_ok_at    INTEGER,
    last_error    TEXT,
    last_error_code TEXT,
    last_fired_at INTEGER,                       -- schedules: the last firing handled
    event_count   INTEGER NOT NULL DEFAULT 0,
    websub_state  TEXT NOT NULL DEFAULT 'off',   -- off | unavailable | pending | subscribed | denied | failed | unsubscribing
    websub_topic  TEXT,
    websub_lease_until INTEGER,
    websub_error  TEXT,
    created_by    BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX sources_team ON sources (team_id, created_at);
CREATE INDEX sources_due ON sources (next_run_at);

-- Every item a source has seen (baseline items included), so nothing triggers twice.
CREATE TABLE source_items (
    source_id   BLOB NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    item_key    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,                   -- what the item said; an edit updates the event
    event_id    BLOB,                            -- NULL for baseline items
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (source_id, item_key)
);

CREATE TABLE events (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    source_id   BLOB NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,                   -- item.new | video.deleted | schedule.fired | webhook.received | manual
    external_id TEXT NOT NULL,
    data        TEXT NOT NULL,                   -- JSON
    received_at INTEGER NOT NULL,
    updated_at  INTEGER,
    UNIQUE (source_id, external_id)
);
CREATE INDEX events_team ON events (team_id, received_at);
