-- The sweep looks for deliveries still to send or in flight, every minute. (team_id, state,
-- run_at) served no query, so the sweep scanned every delivery ever made, and each change of a
-- delivery's state rewrote its entry. This index holds only live deliveries: a sent, failed or
-- cancelled one leaves it. A query uses it when its WHERE repeats the index's term exactly.
DROP INDEX deliveries_team_state;
CREATE INDEX deliveries_live ON deliveries (run_at) WHERE state IN ('pending', 'scheduled', 'publishing');
