-- Workflows: sources → steps → posts. Every edit is a new version; a run keeps the version it
-- started with.
CREATE TABLE workflows (
    id          UUID PRIMARY KEY,
    team_id     UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    version     BIGINT NOT NULL,                -- the current version
    created_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (team_id, name)
);

CREATE TABLE workflow_versions (
    workflow_id UUID NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    definition  TEXT NOT NULL,                   -- JSON: sources and steps
    created_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

-- Which workflows an event of a source starts (the current version's sources).
CREATE TABLE workflow_sources (
    source_id   UUID NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    workflow_id UUID NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    PRIMARY KEY (source_id, workflow_id)
);

CREATE TABLE workflow_runs (
    id          UUID PRIMARY KEY,
    team_id     UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    workflow_id UUID NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    event_id    UUID REFERENCES events (id) ON DELETE SET NULL,
    trigger     TEXT NOT NULL,                   -- event | manual | rerun
    rerun_of    UUID,
    status      TEXT NOT NULL,                   -- pending | running | waiting | succeeded | failed | skipped | cancelled
    input       TEXT NOT NULL,                   -- JSON: the event's data or the manual payload
    state       TEXT NOT NULL,                   -- JSON: text, variants and each finished step's output
    cursor      TEXT NOT NULL,                   -- JSON: the path of the next step
    seq         BIGINT NOT NULL DEFAULT 0,      -- bumped by every commit; a stale executor stops
    wait_until  TIMESTAMPTZ,
    error       TEXT,
    error_code  TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ
);
-- An event starts each workflow once; reruns and manual runs are not bound by it.
CREATE UNIQUE INDEX workflow_runs_event ON workflow_runs (workflow_id, event_id) WHERE trigger = 'event';
CREATE INDEX workflow_runs_team ON workflow_runs (team_id, created_at);
CREATE INDEX workflow_runs_workflow ON workflow_runs (workflow_id, created_at);

CREATE TABLE workflow_step_runs (
    id          UUID PRIMARY KEY,
    run_id      UUID NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    path        TEXT NOT NULL,                   -- "2", "3.then.0": where the step is in the definition
    step_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,                   -- succeeded | failed | skipped | waiting | retrying
    input       TEXT,
    output      TEXT,
    error       TEXT,
    error_code  TEXT,
    attempts    BIGINT NOT NULL DEFAULT 1,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    UNIQUE (run_id, path)
);

CREATE TABLE approvals (
    id          UUID PRIMARY KEY,
    team_id     UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    run_id      UUID NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    status      TEXT NOT NULL,                   -- pending | approved | rejected | expired | cancelled
    approvers   TEXT NOT NULL,                   -- JSON: users and/or a role
    proposal    TEXT NOT NULL,                   -- JSON: the text and each target's text
    on_timeout  TEXT NOT NULL,                   -- approve | reject | expire
    expires_at  TIMESTAMPTZ NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,            -- SHA-256 of the one-time link's token
    decided_by  UUID REFERENCES users (id) ON DELETE SET NULL,
    decided_via TEXT,                            -- api | link | timeout
    edits       TEXT,                            -- JSON
    comment     TEXT,
    decided_at  TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (run_id, path)
);
CREATE INDEX approvals_team ON approvals (team_id, status, created_at);

-- AI rewrite: the team's endpoint, model and key (sealed), and its daily budget.
CREATE TABLE ai_settings (
    team_id      UUID PRIMARY KEY REFERENCES teams (id) ON DELETE CASCADE,
    base_url     TEXT,
    model        TEXT NOT NULL,
    api_key      TEXT,
    daily_calls  BIGINT NOT NULL,
    daily_tokens BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE ai_usage (
    team_id  UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    day      TEXT NOT NULL,
    calls    BIGINT NOT NULL DEFAULT 0,
    tokens   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, day)
);

-- What runs when any of the team's runs fails: a workflow, given the failed run as its payload.
ALTER TABLE teams ADD COLUMN error_workflow UUID;
