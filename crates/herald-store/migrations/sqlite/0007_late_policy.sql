-- How late a team lets a delivery go out: NULL publishes however late; N seconds past its time,
-- a delivery is marked failed instead of sent (a node was down, say).
ALTER TABLE teams ADD COLUMN late_limit_secs INTEGER;
