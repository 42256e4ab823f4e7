-- 0006 security: least-privilege roles and tenant isolation by row-level security.
--
-- Roles are cluster-wide while migrations run per database: each role is created only when missing,
-- and a concurrent creation by another database's migration is tolerated (never a failure).
--   usagebill_worker  ingestion: reads what pricing and quotas need, writes events and aggregates;
--                     no UPDATE/DELETE of invoices, no DDL.
--   usagebill_reader  read-only, one org at a time: a LOGIN role per org is made a member of it and
--                     mapped to its org in org_readers; RLS shows that role its org's rows only.
-- The reader's org is derived from the login role (session_user), which a reader cannot change (unlike a session
-- setting, which any session may SET). The owner that runs migrations is not subject to RLS.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['usagebill_worker', 'usagebill_reader'] LOOP
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration made it at the same moment
        END;
    END LOOP;
END
$$;

-- Which LOGIN role reads which org. Only the owner writes it.
CREATE TABLE org_readers (
    role_name name PRIMARY KEY,
    org_id    text NOT NULL CHECK (length(org_id) BETWEEN 1 AND 256),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The org the logged-in role may read, NULL for anyone not mapped. SECURITY DEFINER so readers need no
-- access to org_readers itself (inside it current_user is the owner, so the login is session_user,
-- which only a superuser can change); search_path pinned so it cannot be hijacked.
CREATE FUNCTION usagebill_reader_org() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT org_id FROM public.org_readers WHERE role_name = session_user $$;
REVOKE ALL ON FUNCTION usagebill_reader_org() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usagebill_reader_org() TO usagebill_reader, usagebill_worker;

-- Row-level security on every table that carries an org's data.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['orgs', 'events', 'rejected_events', 'invoice_usage', 'usage_daily', 'rates',
                             'org_adjustments', 'invoices', 'invoice_lines', 'quotas', 'alerts'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY worker_all ON %I TO usagebill_worker USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$$;

CREATE POLICY reader_own_org ON orgs FOR SELECT TO usagebill_reader USING (org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON events FOR SELECT TO usagebill_reader USING (org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON rejected_events FOR SELECT TO usagebill_reader
    USING (org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON invoice_usage FOR SELECT TO usagebill_reader
    USING (org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON usage_daily FOR SELECT TO usagebill_reader
    USING (org_id = usagebill_reader_org());
-- public prices are visible to every reader; custom (net) prices only to their org
CREATE POLICY reader_own_org ON rates FOR SELECT TO usagebill_reader
    USING (org_id IS NULL OR org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON org_adjustments FOR SELECT TO usagebill_reader
    USING (org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON invoices FOR SELECT TO usagebill_reader USING (org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON invoice_lines FOR SELECT TO usagebill_reader
    USING (EXISTS (SELECT 1 FROM invoices i WHERE i.invoice_id = invoice_lines.invoice_id
                                               AND i.org_id = usagebill_reader_org()));
CREATE POLICY reader_own_org ON quotas FOR SELECT TO usagebill_reader USING (org_id = usagebill_reader_org());
CREATE POLICY reader_own_org ON alerts FOR SELECT TO usagebill_reader USING (org_id = usagebill_reader_org());

-- Views run with their owner's rights unless security_invoker: without it a view would bypass RLS.
ALTER VIEW unpriced_usage SET (security_invoker = true);
ALTER VIEW usage_monthly SET (security_invoker = true);
ALTER VIEW unpriced_usage_monthly SET (security_invoker = true);
ALTER VIEW quota_usage_monthly SET (security_invoker = true);
ALTER VIEW quota_status SET (security_invoker = true);

-- Readers: SELECT on the org-scoped tables and views (RLS filters them), nothing else.
GRANT SELECT ON orgs, events, rejected_events, invoice_usage, usage_daily, rates, org_adjustments, invoices,
    invoice_lines, quotas, alerts, billing_months, quota_unpriced_rates TO usagebill_reader;
GRANT SELECT ON unpriced_usage, usage_monthly, unpriced_usage_monthly, quota_usage_monthly, quota_status
    TO usagebill_reader;

-- Worker: what ingestion, pricing, the quota mirror and alert delivery need.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO usagebill_worker;
GRANT INSERT ON event_keys, events, rejected_events, event_conflicts, orgs, alerts TO usagebill_worker;
GRANT INSERT, UPDATE ON usage_daily, invoice_usage, billing_months TO usagebill_worker;
GRANT UPDATE (enqueued_at, delivered_at, attempts, last_error) ON alerts TO usagebill_worker;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO usagebill_worker;
REVOKE SELECT ON org_readers FROM usagebill_worker;
