-- Notification e-mail. Owners and admins are mailed about notifications unless they turn it off
-- for that team; `mailed_at` marks the notifications a digest already told, so the next digest
-- says only what is new and the mail job can tell when it last wrote.
ALTER TABLE memberships ADD COLUMN notify_mail INTEGER NOT NULL DEFAULT 1;
ALTER TABLE notifications ADD COLUMN mailed_at INTEGER;
CREATE INDEX notifications_unmailed ON notifications (team_id, kind) WHERE mailed_at IS NULL;
