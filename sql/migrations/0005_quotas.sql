-- 0005 quotas: limits per org (or per user of an org) per UTC calendar month, in tokens or money, soft or
-- hard; the views users query directly (usage_monthly, unpriced_usage_monthly, quota_usage_monthly,
-- quota_status); the conservative rate that charges unpriced usage against money limits; the alerts outbox.

-- One row per (org, user scope, kind). user_id NULL = the whole org. A token limit counts input + output
-- tokens (input already includes cache reads and writes; output includes reasoning). A money limit is in
-- the org's currency (orgs.currency, USD when the org has no row yet) and counts priced cost plus unpriced
-- tokens at the conservative rate (quota_unpriced_rate below).
CREATE TABLE quotas (
    quota_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id         text NOT NULL CHECK (length(org_id) BETWEEN 1 AND 256),
    user_id        text CHECK (user_id IS NULL OR length(user_id) BETWEEN 1 AND 4096),
    kind           text NOT NULL CHECK (kind IN ('tokens', 'money')),
    quota_limit    numeric NOT NULL CHECK (quota_limit > 0),
    currency       char(3) CHECK (currency ~ '^[A-Z]{3}$'),
    mode           text NOT NULL DEFAULT 'soft' CHECK (mode IN ('soft', 'hard')),
    -- percents of the limit at which an alert fires once per month (100 = the limit itself)
    thresholds     numeric[] NOT NULL DEFAULT '{50,80,100}'
                   CHECK (cardinality(thresholds) <= 20 AND 0 < ALL (thresholds) AND 1000 >= ALL (thresholds)),
    webhook_url    text CHECK (webhook_url IS NULL OR webhook_url ~ '^https?://'),
    webhook_secret text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quotas_currency CHECK ((kind = 'money') = (currency IS NOT NULL)),
    CONSTRAINT quotas_tokens_whole CHECK (kind = 'money' OR quota_limit = trunc(quota_limit)),
    CONSTRAINT quotas_webhook_secret CHECK (webhook_url IS NULL OR webhook_secret IS NOT NULL),
    CONSTRAINT quotas_scope UNIQUE NULLS NOT DISTINCT (org_id, user_id, kind)
);

-- The conservative per-million rate that charges unpriced usage (no rate row matched yet) against money
-- limits, so an unknown model never bypasses a money limit. Row '*' serves every currency without its
-- own row. The rate applied is the larger of this floor and the highest price of any rate row in force
-- in that currency (public or the org's own): see quota_unpriced_rate().
CREATE TABLE quota_unpriced_rates (
    currency           text PRIMARY KEY CHECK (currency = '*' OR currency ~ '^[A-Z]{3}$'),
    input_per_million  numeric NOT NULL CHECK (input_per_million >= 0),
    output_per_million numeric NOT NULL CHECK (output_per_million >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- Default floor: 15 / 75 per million (the top public list prices of flagship models at the time of
-- writing); change it with `usagebill quota unpriced-rate`.
INSERT INTO quota_unpriced_rates (currency, input_per_million, output_per_million) VALUES ('*', 15, 75);

-- (input, output) per-million rates charged for unpriced tokens of an org in a currency, now: the larger of
-- the floor (the currency's row, else '*') and the highest price of any rate row in force in that currency
-- (public or the org's own). Input takes the highest of the input and cache-write prices (unpriced input
-- may be cache writes), output the highest of the output and reasoning prices. Always one row. A plain SQL
-- set-returning function, so the planner inlines it into the views.
CREATE FUNCTION quota_unpriced_rate(p_currency text, p_org_id text DEFAULT NULL)
RETURNS TABLE (input_per_million numeric, output_per_million numeric)
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(GREATEST(f.input_per_million, m.max_input), 0),
           COALESCE(GREATEST(f.output_per_million, m.max_output), 0)
    FROM (
        SELECT max(GREATEST(r.price_input, r.price_cache_write, r.price_cache_write_1h)) AS max_input,
               max(GREATEST(r.price_output, r.price_reasoning))                        AS max_output
        FROM rates r
        WHERE r.currency = p_currency AND r.effective_from <= now() AND (r.org_id IS NULL OR r.org_id = p_org_id)
    ) m
    LEFT JOIN LATERAL (
        SELECT u.input_per_million, u.output_per_million
        FROM quota_unpriced_rates u
        WHERE u.currency IN (p_currency, '*')
        ORDER BY u.currency = '*'
        LIMIT 1
    ) f ON true
$$;

-- Usage per org, user (NULL = none given), provider, model and UTC calendar month, from the daily aggregates.
CREATE VIEW usage_monthly AS
SELECT d.org_id,
       NULLIF(d.user_id, '')                       AS user_id,
       date_trunc('month', d.day)::date            AS month,
       d.provider,
       d.model,
       sum(d.events)                               AS events,
       sum(d.unpriced_events)                      AS unpriced_events,
       sum(d.input_tokens)                         AS input_tokens,
       sum(d.cached_input_tokens)                  AS cached_input_tokens,
       sum(d.cache_write_tokens)                   AS cache_write_tokens,
       sum(d.output_tokens)                        AS output_tokens,
       sum(d.reasoning_tokens)                     AS reasoning_tokens,
       sum(d.input_tokens) + sum(d.output_tokens)  AS total_tokens,
       sum(d.unpriced_input_tokens)                AS unpriced_input_tokens,
       sum(d.unpriced_output_tokens)               AS unpriced_output_tokens,
       sum(d.cost)                                 AS cost,
       COALESCE(o.currency, 'USD')                 AS currency
FROM usage_daily d
LEFT JOIN orgs o ON o.org_id = d.org_id
GROUP BY d.org_id, d.user_id, date_trunc('month', d.day), d.provider, d.model, o.currency;

-- Unpriced usage per org, user, provider, model and month, with what money limits charge for it now.
CREATE VIEW unpriced_usage_monthly AS
SELECT m.org_id, m.user_id, m.month, m.provider, m.model, m.currency,
       m.unpriced_events, m.unpriced_input_tokens, m.unpriced_output_tokens,
       (m.unpriced_input_tokens * r.input_per_million + m.unpriced_output_tokens * r.output_per_million)
           / 1000000                               AS conservative_cost
FROM usage_monthly m
CROSS JOIN LATERAL quota_unpriced_rate(m.currency, m.org_id) r
WHERE m.unpriced_events > 0;

-- What quotas count, per org (user_id NULL) and per user of an org, per month: tokens (input + output) and
-- money (priced cost + unpriced tokens at the conservative rate), in the org's currency. A UNION ALL of two
-- plain aggregates, so a filter on org_id reaches the usage_daily index.
CREATE VIEW quota_usage_monthly AS
SELECT s.org_id, s.user_id, s.month, COALESCE(o.currency, 'USD') AS currency, s.tokens, s.cost,
       s.unpriced_input_tokens, s.unpriced_output_tokens,
       s.cost + (s.unpriced_input_tokens * r.input_per_million + s.unpriced_output_tokens * r.output_per_million)
           / 1000000 AS money
FROM (
    SELECT d.org_id, NULL::text AS user_id, date_trunc('month', d.day)::date AS month,
           sum(d.input_tokens + d.output_tokens) AS tokens, sum(d.cost) AS cost,
           sum(d.unpriced_input_tokens) AS unpriced_input_tokens, sum(d.unpriced_output_tokens) AS unpriced_output_tokens
    FROM usage_daily d
    GROUP BY d.org_id, date_trunc('month', d.day)
    UNION ALL
    SELECT d.org_id, d.user_id, date_trunc('month', d.day)::date,
           sum(d.input_tokens + d.output_tokens), sum(d.cost),
           sum(d.unpriced_input_tokens), sum(d.unpriced_output_tokens)
    FROM usage_daily d
    WHERE d.user_id <> ''
    GROUP BY d.org_id, d.user_id, date_trunc('month', d.day)
) s
LEFT JOIN orgs o ON o.org_id = s.org_id
CROSS JOIN LATERAL quota_unpriced_rate(COALESCE(o.currency, 'USD'), s.org_id) r;

-- Every quota against the current UTC month: used, limit, remaining (negative when over), percent used.
-- Per quota, a range scan of its org's days this month (usage_daily's primary key leads with org_id, day).
CREATE VIEW quota_status AS
SELECT q.quota_id, q.org_id, q.user_id, q.kind, q.mode, q.currency, cm.month, q.quota_limit,
       x.used,
       q.quota_limit - x.used                         AS remaining,
       round(x.used * 100 / q.quota_limit, 2)         AS percent,
       x.used >= q.quota_limit                        AS exceeded,
       COALESCE(u.unpriced_input_tokens + u.unpriced_output_tokens, 0) AS unpriced_tokens,
       q.thresholds
FROM quotas q
CROSS JOIN (SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month) cm
CROSS JOIN LATERAL (
    SELECT sum(d.input_tokens + d.output_tokens) AS tokens, sum(d.cost) AS cost,
           sum(d.unpriced_input_tokens) AS unpriced_input_tokens, sum(d.unpriced_output_tokens) AS unpriced_output_tokens
    FROM usage_daily d
    WHERE d.org_id = q.org_id AND d.day >= cm.month AND d.day < (cm.month + interval '1 month')::date
      AND (q.user_id IS NULL OR d.user_id = q.user_id)
) u
LEFT JOIN orgs o ON o.org_id = q.org_id
CROSS JOIN LATERAL quota_unpriced_rate(COALESCE(o.currency, 'USD'), q.org_id) r
CROSS JOIN LATERAL (
    SELECT CASE q.kind
               WHEN 'tokens' THEN COALESCE(u.tokens, 0)
               ELSE COALESCE(u.cost, 0) + (COALESCE(u.unpriced_input_tokens, 0) * r.input_per_million
                                           + COALESCE(u.unpriced_output_tokens, 0) * r.output_per_million) / 1000000
           END AS used
) x;

-- The alerts outbox: a threshold crossing is recorded once per (org, user scope, quota, threshold, month)
-- inside the ingest transaction that caused it, then delivered by an rq job (webhook and log). A kill
-- between commit and delivery delays an alert, never loses it; a delivery retried after a kill may repeat
-- (receivers dedup by alert_id, sent in the body and the X-Usagebill-Alert-Id header).
CREATE TABLE alerts (
    alert_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id       text NOT NULL,
    user_id      text,
    quota_id     bigint NOT NULL REFERENCES quotas (quota_id) ON DELETE CASCADE,
    threshold    numeric NOT NULL,
    month        date NOT NULL CHECK (month = date_trunc('month', month)::date),
    kind         text NOT NULL,
    quota_limit  numeric NOT NULL,   -- as it was when the threshold was crossed
    used         numeric NOT NULL,
    currency     char(3),
    fired_at     timestamptz NOT NULL DEFAULT now(),
    enqueued_at  timestamptz,        -- last hand-over to the delivery queue (re-enqueued when stale)
    delivered_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    CONSTRAINT alerts_once UNIQUE NULLS NOT DISTINCT (org_id, user_id, quota_id, threshold, month)
);
CREATE INDEX alerts_undelivered ON alerts (fired_at) WHERE delivered_at IS NULL;

-- Settling reservations: after a batch commits, the worker asks which of an org's active reservations
-- have their event counted (events is the ingest area's table; this index is the quota area's).
CREATE INDEX events_reservation ON events (reservation_id) WHERE reservation_id IS NOT NULL;
