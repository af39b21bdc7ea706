-- Posting slots: the weekly times a team likes to post to a connection, in the team's timezone.
-- `schedule_at: "next_slot"` puts a delivery at its connection's next free one.
CREATE TABLE posting_slots (
    team_id       BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    connection_id BLOB NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    weekday       INTEGER NOT NULL CHECK (weekday BETWEEN 0 AND 6),   -- 0 is Monday
    minute        INTEGER NOT NULL CHECK (minute BETWEEN 0 AND 1439), -- minutes after local midnight
    PRIMARY KEY (connection_id, weekday, minute)
);

-- Repeating posts: when one occurrence is done, the next is scheduled `repeat_days` later (local
-- time, so across DST it keeps its hour). `series_id` is the first post of the series.
ALTER TABLE posts ADD COLUMN repeat_days INTEGER;
ALTER TABLE posts ADD COLUMN series_id BLOB;
CREATE INDEX posts_series ON posts (series_id) WHERE series_id IS NOT NULL;
-- Finding a connection's taken times.
CREATE INDEX deliveries_connection_run ON deliveries (connection_id, run_at);
