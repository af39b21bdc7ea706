-- Posts and their deliveries. Times are UTC; a team's timezone is how it writes local times.
ALTER TABLE teams ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';

CREATE TABLE posts (
    id              UUID PRIMARY KEY,
    team_id         UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    author_user     UUID REFERENCES users (id) ON DELETE SET NULL,
    author_key      UUID,
    state           TEXT NOT NULL CHECK (state IN ('draft', 'scheduled', 'publishing', 'published',
                        'partially_published', 'failed', 'cancelled')),
    content         TEXT NOT NULL,                 -- JSON: text, link, options, thread
    schedule_at     TIMESTAMPTZ,
    timezone        TEXT,                          -- the zone a local schedule time was given in
    campaign        TEXT,
    tags            TEXT NOT NULL DEFAULT '[]',    -- JSON array of strings
    idempotency_key TEXT,
    request_hash    TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (team_id, idempotency_key)
);
CREATE INDEX posts_team_created ON posts (team_id, created_at, id);

CREATE TABLE deliveries (
    id                 UUID PRIMARY KEY,
    post_id            UUID NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    team_id            UUID NOT NULL,
    connection_id      UUID NOT NULL,
    platform           TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'scheduled', 'publishing', 'published', 'failed',
                           'unconfirmed', 'cancelled')),
    content            TEXT NOT NULL,              -- JSON: the resolved text, link, options for this target
    idempotency_key    TEXT NOT NULL,
    job_id             UUID,
    run_at             TIMESTAMPTZ,
    parts              TEXT NOT NULL DEFAULT '[]', -- JSON: thread parts already published {id, url}
    platform_post_id   TEXT,
    platform_url       TEXT,
    attempts           BIGINT NOT NULL DEFAULT 0,
    first_attempt_at   TIMESTAMPTZ,
    call_started_at    TIMESTAMPTZ,                -- set while a platform call may be in flight
    last_error         TEXT,
    last_error_class   TEXT,
    published_at       TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX deliveries_post ON deliveries (post_id);
CREATE INDEX deliveries_team_state ON deliveries (team_id, state, run_at);

CREATE TABLE delivery_attempts (
    id           UUID PRIMARY KEY,
    delivery_id  UUID NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    part         BIGINT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    duration_ms  BIGINT NOT NULL,
    outcome      TEXT NOT NULL,                    -- published, or the error class
    http_status  BIGINT,
    code         TEXT,
    message      TEXT
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, started_at);
