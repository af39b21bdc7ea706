-- The durable job queue.
CREATE TABLE jobs (
    id           uuid PRIMARY KEY,                 -- UUIDv7
    queue        text NOT NULL,
    kind         text NOT NULL,
    payload      jsonb NOT NULL,
    priority     smallint NOT NULL DEFAULT 0,      -- lower runs first
    state        text NOT NULL,                    -- pending | running | succeeded | dead | cancelled
    attempt      integer NOT NULL DEFAULT 0,       -- attempts started, rate-limited runs excluded
    max_attempts integer NOT NULL,
    run_at       timestamptz NOT NULL,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    locked_by    text,                             -- set exactly while running
    locked_until timestamptz,
    bucket_key   text,
    unique_key   text,
    last_error   text
);

CREATE INDEX jobs_ready ON jobs (queue, priority, run_at) WHERE state = 'pending';
CREATE INDEX jobs_leases ON jobs (locked_until) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'running');
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');

CREATE TABLE job_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    worker      text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    outcome     text NOT NULL,
    error       text
);
CREATE INDEX job_attempts_job ON job_attempts (job_id);

CREATE TABLE rate_buckets (
    key            text PRIMARY KEY,
    capacity       double precision,
    refill_per_sec double precision,
    tokens         double precision NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL,
    blocked_until  timestamptz
);

-- Dead rows pile up fast in a queue table; vacuum it far more eagerly than the default.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
