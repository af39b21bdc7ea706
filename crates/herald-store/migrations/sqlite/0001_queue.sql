-- The durable job queue. Times are microseconds since the Unix epoch, UTC.
CREATE TABLE jobs (
    id           BLOB PRIMARY KEY,                 -- UUIDv7
    queue        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,                    -- JSON
    priority     INTEGER NOT NULL DEFAULT 0,       -- lower runs first
    state        TEXT NOT NULL,                    -- pending | running | succeeded | dead | cancelled
    attempt      INTEGER NOT NULL DEFAULT 0,       -- attempts started, rate-limited runs excluded
    max_attempts INTEGER NOT NULL,
    run_at       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    locked_by    TEXT,                             -- set exactly while running
    locked_until INTEGER,
    bucket_key   TEXT,
    unique_key   TEXT,
    last_error   TEXT
);

-- What a claim scans: only pending rows, in claim order.
CREATE INDEX jobs_ready ON jobs (queue, priority, run_at) WHERE state = 'pending';
-- What the reaper scans.
CREATE INDEX jobs_leases ON jobs (locked_until) WHERE state = 'running';
-- A unique key holds only while its job is live; a finished job frees it.
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'running');
-- What retention scans.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');

-- One row per run of a job, whatever its outcome.
CREATE TABLE job_attempts (
    id          INTEGER PRIMARY KEY,
    job_id      BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    worker      TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,  -- succeeded | failed | dead | rate_limited | cancelled | lease_expired | released
    error       TEXT
);
CREATE INDEX job_attempts_job ON job_attempts (job_id);

-- Token buckets shared by every node: a claim skips jobs whose bucket is empty or blocked.
-- NULL capacity means no token limit (the bucket can still be blocked until a time).
CREATE TABLE rate_buckets (
    key            TEXT PRIMARY KEY,
    capacity       REAL,
    refill_per_sec REAL,
    tokens         REAL NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL,
    blocked_until  INTEGER
);
