-- Workflows: sources → steps → posts. Every edit is a new version; a run keeps the version it
-- started with.
CREATE TABLE workflows (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    active      INTEGER NOT NULL DEFAULT 1,
    version     INTEGER NOT NULL,                -- the current version
    created_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (team_id, name)
);

CREATE TABLE workflow_versions (
    workflow_id BLOB NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    definition  TEXT NOT NULL,                   -- JSON: sources and steps
    created_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

-- Which workflows an event of a source starts (the current version's sources).
CREATE TABLE workflow_sources (
    source_id   BLOB NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    workflow_id BLOB NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    PRIMARY KEY (source_id, workflow_id)
);

CREATE TABLE workflow_runs (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    workflow_id BLOB NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    event_id    BLOB REFERENCES events (id) ON DELETE SET NULL,
    trigger     TEXT NOT NULL,                   -- event | manual | rerun
    rerun_of    BLOB,
    status      TEXT NOT NULL,                   -- pending | running | waiting | succeeded | failed | skipped | cancelled
    input       TEXT NOT NULL,                   -- JSON: the event's data or the manual payload
    state       TEXT NOT NULL,                   -- JSON: text, variants and each finished step's output
    cursor      TEXT NOT NULL,                   -- JSON: the path of the next step
    seq         INTEGER NOT NULL DEFAULT 0,      -- bumped by every commit; a stale executor stops
    wait_until  INTEGER,
    error       TEXT,
    error_code  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    finished_at INTEGER
);
-- An event starts each workflow once; reruns and manual runs are not bound by it.
CREATE UNIQUE INDEX workflow_runs_event ON workflow_runs (workflow_id, event_id) WHERE trigger = 'event';
CREATE INDEX workflow_runs_team ON workflow_runs (team_id, created_at);
CREATE INDEX workflow_runs_workflow ON workflow_runs (workflow_id, created_at);

CREATE TABLE workflow_step_runs (
    id          BLOB PRIMARY KEY,
    run_id      BLOB NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    path        TEXT NOT NULL,                   -- "2", "3.then.0": where the step is in the definition
    step_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,                   -- succeeded | failed | skipped | waiting | retrying
    input       TEXT,
    output      TEXT,
    error       TEXT,
    error_code  TEXT,
    attempts    INTEGER NOT NULL DEFAULT 1,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    UNIQUE (run_id, path)
);

CREATE TABLE approvals (
    id          BLOB PRIMARY KEY,
    team_id     BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    run_id      BLOB NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    status      TEXT NOT NULL,                   -- pending | approved | rejected | expired | cancelled
    approvers   TEXT NOT NULL,                   -- JSON: users and/or a role
    proposal    TEXT NOT NULL,                   -- JSON: the text and each target's text
    on_timeout  TEXT NOT NULL,                   -- approve | reject | expire
    expires_at  INTEGER NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,            -- SHA-256 of the one-time link's token
    decided_by  BLOB REFERENCES users (id) ON DELETE SET NULL,
    decided_via TEXT,                            -- api | link | timeout
    edits       TEXT,                            -- JSON
    comment     TEXT,
    decided_at  INTEGER,
    created_at  INTEGER NOT NULL,
    UNIQUE (run_id, path)
);
CREATE INDEX approvals_team ON approvals (team_id, status, created_at);

-- AI rewrite: the team's endpoint, model and key (sealed), and its daily budget.
CREATE TABLE ai_settings (
    team_id      BLOB PRIMARY KEY REFERENCES teams (id) ON DELETE CASCADE,
    base_url     TEXT,
    model        TEXT NOT NULL,
    api_key      TEXT,
    daily_calls  INTEGER NOT NULL,
    daily_tokens INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE ai_usage (
    team_id  BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    day      TEXT NOT NULL,
    calls    INTEGER NOT NULL DEFAULT 0,
    tokens   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, day)
);

-- What runs when any of the team's runs fails: a workflow, given the failed run as its payload.
ALTER TABLE teams ADD COLUMN error_workflow BLOB;
