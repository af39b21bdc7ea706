-- Engagement snapshots of published deliveries, and when each is next due for one. The collector
-- sets stats_next_at after every fetch, thinning out with the delivery's age; NULL means never
-- fetched (due now), and a far-future time means never again (too old, or the platform gives no
-- counts).
CREATE TABLE delivery_stats (
    id           BLOB PRIMARY KEY,
    team_id      BLOB NOT NULL,
    delivery_id  BLOB NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    fetched_at   INTEGER NOT NULL,
    metrics      TEXT NOT NULL                     -- JSON: {"likes": 3, "reposts": 1, ...}
);
CREATE INDEX delivery_stats_delivery ON delivery_stats (delivery_id, fetched_at);

ALTER TABLE deliveries ADD COLUMN stats_next_at INTEGER;
CREATE INDEX deliveries_stats_due ON deliveries (stats_next_at, published_at) WHERE state = 'published';
