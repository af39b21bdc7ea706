-- A monthly count that checks its limit in the statement that counts it (herald-accounts'
-- `consume_monthly_deferred`), so a post's count goes in the same statement as its rows instead
-- of a round trip of its own. Over the limit the statement fails with SQLSTATE HQ001, whose
-- detail is "<metric> <limit> <used before> <wanted>", and its transaction rolls back with it.
CREATE FUNCTION herald_within_quota(metric TEXT, used BIGINT, quota_limit BIGINT, wanted BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
BEGIN
    IF quota_limit IS NOT NULL AND used > quota_limit THEN
        RAISE EXCEPTION 'the team''s % quota is reached', metric
            USING ERRCODE = 'HQ001', DETAIL = metric || ' ' || quota_limit || ' ' || (used - wanted) || ' ' || wanted;
    END IF;
    RETURN used;
END
$$;
