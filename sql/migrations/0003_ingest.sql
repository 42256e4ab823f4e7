-- 0003 ingest/aggregates: the billing-month routing shared by ingestion, reprice and invoices, and the
-- indexes the ingest path and operators need. The aggregate tables themselves are in 0001.

-- Route usage months to the months whose invoices carry them (the protocol agreed with invoices):
-- upsert a billing_months row for every usage month, lock them FOR SHARE in month order, and route
-- each usage month to itself when open, else to the earliest later open month (upserted and locked
-- FOR SHARE in month order too; loop while a candidate turns out closed). The share locks are held
-- to the end of the caller's transaction, so `invoice close` (UPDATE ... SET status = 'closed') waits
-- for in-flight ingests: a batch lands on the invoice or as late usage, never nowhere.
CREATE FUNCTION route_billing_months(months date[])
RETURNS TABLE (usage_month date, billing_month date)
LANGUAGE plpgsql
AS $$
DECLARE
    m     date;
    cand  date;
    state text;
BEGIN
    INSERT INTO billing_months AS b (month)
    SELECT DISTINCT date_trunc('month', x)::date FROM unnest(months) AS x WHERE x IS NOT NULL ORDER BY 1
    ON CONFLICT (month) DO NOTHING;

    PERFORM 1 FROM billing_months AS b
     WHERE b.month IN (SELECT date_trunc('month', x)::date FROM unnest(months) AS x)
     ORDER BY b.month
       FOR SHARE;

    FOR m IN SELECT DISTINCT date_trunc('month', x)::date FROM unnest(months) AS x WHERE x IS NOT NULL ORDER BY 1
    LOOP
        cand := m;
        LOOP
            SELECT b.status INTO state FROM billing_months AS b WHERE b.month = cand FOR SHARE;
            IF state IS NULL THEN
                INSERT INTO billing_months (month) VALUES (cand) ON CONFLICT (month) DO NOTHING;
                CONTINUE;  -- read it again, now locked
            END IF;
            IF state = 'open' THEN
                usage_month := m;
                billing_month := cand;
                RETURN NEXT;
                EXIT;
            END IF;
            cand := (cand + interval '1 month')::date;
            state := NULL;
        END LOOP;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION route_billing_months(date[]) IS
    'usage month -> billing month (itself when open, else the earliest later open month); locks the month rows FOR SHARE';

-- Operators look rejected events up by the job that parked them (conflicts: by their UNIQUE key).
CREATE INDEX rejected_events_job ON rejected_events (job_id) WHERE job_id IS NOT NULL;
