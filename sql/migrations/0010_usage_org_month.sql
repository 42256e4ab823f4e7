-- 0010 usage_org_month: per org and usage month (the UTC month of occurred_at), what quota checks read
-- at every ingest batch. Summing an org's month of usage_daily (one row per user, day, provider and model)
-- costs more the more users and days the org has; this row is one index lookup. Kept by the same
-- statements, in the same transactions, as usage_daily (billing.aggregates), and reconciled against
-- the events like it.
CREATE TABLE usage_org_month (
    org_id                 text NOT NULL,
    month                  date NOT NULL CHECK (month = date_trunc('month', month)::date),
    events                 bigint NOT NULL DEFAULT 0,
    unpriced_events        bigint NOT NULL DEFAULT 0,
    input_tokens           numeric NOT NULL DEFAULT 0,
    output_tokens          numeric NOT NULL DEFAULT 0,
    unpriced_input_tokens  numeric NOT NULL DEFAULT 0,
    unpriced_output_tokens numeric NOT NULL DEFAULT 0,
    cost                   numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, month)
);

INSERT INTO usage_org_month (org_id, month, events, unpriced_events, input_tokens, output_tokens,
                             unpriced_input_tokens, unpriced_output_tokens, cost)
SELECT org_id, date_trunc('month', day)::date, sum(events), sum(unpriced_events), sum(input_tokens),
       sum(output_tokens), sum(unpriced_input_tokens), sum(unpriced_output_tokens), sum(cost)
FROM usage_daily
GROUP BY 1, 2;

-- What a quota scope has used in a month (one row, NULLs when nothing): the org scope (p_user_id NULL) from
-- its usage_org_month row, a user's from a range scan of the org's days for that user (usage_daily's
-- primary key). Tokens are input + output. A plain SQL function, so the planner inlines it.
CREATE FUNCTION quota_scope_usage(p_org_id text, p_month date, p_user_id text)
RETURNS TABLE (tokens numeric, cost numeric, unpriced_input_tokens numeric, unpriced_output_tokens numeric)
LANGUAGE sql STABLE AS $$
    SELECT sum(x.tokens), sum(x.cost), sum(x.ui), sum(x.uo)
    FROM (
        SELECT m.input_tokens + m.output_tokens AS tokens, m.cost,
               m.unpriced_input_tokens AS ui, m.unpriced_output_tokens AS uo
        FROM usage_org_month m
        WHERE p_user_id IS NULL AND m.org_id = p_org_id AND m.month = p_month
        UNION ALL
        SELECT d.input_tokens + d.output_tokens, d.cost, d.unpriced_input_tokens, d.unpriced_output_tokens
        FROM usage_daily d
        WHERE p_user_id IS NOT NULL AND d.org_id = p_org_id AND d.user_id = p_user_id
          AND d.day >= p_month AND d.day < (p_month + interval '1 month')::date
    ) x
$$;

-- The absolute totals the quota mirror holds for the given (org, month) pairs of orgs with quotas: the
-- org scope (user_id NULL) and each user with a quota of its own; tokens, and money = priced cost plus
-- unpriced tokens at the conservative rate. One definition for the ingest's alerts statement and the
-- mirror's reads (sql/queries/quotas.sql).
CREATE FUNCTION quota_totals(p_org_ids text[], p_months date[])
RETURNS TABLE (org_id text, month date, user_id text, tokens numeric, money numeric)
LANGUAGE sql STABLE AS $$
    WITH om AS (
        SELECT DISTINCT om.org_id, om.month
        FROM unnest(p_org_ids, p_months) AS om(org_id, month)
        WHERE EXISTS (SELECT 1 FROM quotas q WHERE q.org_id = om.org_id)
    ), scopes AS (
        SELECT om.org_id, om.month, NULL::text AS user_id FROM om
        UNION
        SELECT om.org_id, om.month, q.user_id
        FROM om JOIN quotas q ON q.org_id = om.org_id AND q.user_id IS NOT NULL
    )
    SELECT s.org_id, s.month, s.user_id, u.tokens,
           COALESCE(u.cost, 0)
             + (COALESCE(u.ui, 0) * r.input_per_million + COALESCE(u.uo, 0) * r.output_per_million) / 1000000
    FROM scopes s
    CROSS JOIN LATERAL quota_scope_usage(s.org_id, s.month, s.user_id) AS u (tokens, cost, ui, uo)
    LEFT JOIN orgs o ON o.org_id = s.org_id
    CROSS JOIN LATERAL quota_unpriced_rate(COALESCE(o.currency, 'USD'), s.org_id) r
$$;

ALTER TABLE usage_org_month ENABLE ROW LEVEL SECURITY;
CREATE POLICY worker_all ON usage_org_month TO usagebill_worker USING (true) WITH CHECK (true);
CREATE POLICY reader_own_org ON usage_org_month FOR SELECT TO usagebill_reader
    USING (org_id = usagebill_reader_org());
GRANT SELECT ON usage_org_month TO usagebill_reader;
GRANT SELECT, INSERT, UPDATE ON usage_org_month TO usagebill_worker;
