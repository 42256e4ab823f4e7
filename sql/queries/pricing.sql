-- Pricing: resolve the rate of every row of a batch table and cost it, set-based.
--
-- Rates are resolved per distinct (provider, model, tier, currency) of the batch, not per event nor
-- per org: a batch of 1000 events from 50 orgs has a handful of models. The winner of a model only
-- changes at a candidate's effective_from and min_input_tokens, so each model is cut into cells
-- [from_at, to_at) x [lo, hi] inside which one rate wins; each cell is resolved by the rule of
-- DESIGN.md once. Orgs billed in another currency than USD, or with custom rows or adjustments
-- ("special" orgs) get cells of their own (scope = the org): their custom rows (step 2) replace the
-- public cells from the first of them on, and their adjustments split the public cells at their dates.
-- Every other org uses the model's USD cells (scope ''). Each event then finds its cell by one hash
-- join on (scope, provider, model, tier) and a range check.
--
-- Providers: rates match the event's provider name, or the name its prices are published under
-- (`provider_aliases`, e.g. an event from "gemini" or "vertex" is priced from "google" rows); when
-- both have an otherwise equal row, the event's own name wins.
--
-- `cells` is the shared CTE chain: {table} is a relation with the batch's org_id, provider, model,
-- service_tier and occurred_at (pricing.py appends `insert_priced` or `cells_select` to it, and the ingest
-- appends its own CTEs before `insert_priced`).

-- name: cells
-- orgs priced apart ("special"): billed in another currency than USD, or with custom rows or
-- adjustments. They are read from those small tables, not found by looking at every event.
WITH special_ids AS MATERIALIZED (
    SELECT org_id FROM orgs WHERE currency <> 'USD'
    UNION
    SELECT org_id FROM org_adjustments
    UNION
    SELECT org_id FROM rates WHERE org_id IS NOT NULL
),
-- the batch's distinct keys, in one pass over it (every later step reads these few rows, not the
-- batch): an event's scope is its org when special, else '' (each event finds its scope the same way,
-- by the special orgs as an array computed once, without a join)
batch_keys AS MATERIALIZED (
    SELECT CASE WHEN t.org_id = ANY (ARRAY(SELECT org_id FROM special_ids)) THEN t.org_id ELSE '' END AS scope,
           t.provider, t.model, coalesce(t.service_tier, '') AS tier, max(t.occurred_at) AS max_at
    FROM {table} AS t
    GROUP BY 1, 2, 3, 4
),
-- the batch's special orgs and their currency
orgs_in AS MATERIALIZED (
    SELECT DISTINCT b.scope AS org_id, coalesce(o.currency, 'USD') AS currency, true AS special
    FROM batch_keys AS b
    LEFT JOIN orgs AS o ON o.org_id = b.scope
    WHERE b.scope <> ''
),
groups AS MATERIALIZED (
    SELECT b.scope, b.provider, b.model, b.tier, coalesce(o.currency, 'USD') AS currency, b.max_at
    FROM batch_keys AS b
    LEFT JOIN orgs_in AS o ON o.org_id = b.scope
),
models AS MATERIALIZED (
    SELECT row_number() OVER () AS g, provider, model, tier, currency, max(max_at) AS max_at,
           coalesce(max(pa.price_provider), provider) AS alias
    FROM groups
    LEFT JOIN provider_aliases AS pa USING (provider)
    GROUP BY provider, model, tier, currency
),
-- the (org, model) keys of the special orgs only
keys AS MATERIALIZED (
    SELECT scope AS org_id, provider, model, tier, currency, max_at, coalesce(pa.price_provider, provider) AS alias
    FROM groups
    LEFT JOIN provider_aliases AS pa USING (provider)
    WHERE scope <> ''
),
-- each model's provider names: its own and the one its prices are published under (an equi-join key)
model_names AS (
    SELECT g, provider AS name FROM models
    UNION
    SELECT g, alias FROM models
),
-- public candidates of each model (1: in force by its latest event, in the currency; 3: the tier;
-- the model exact or by prefix). Looked up by index per model and provider name, never by scanning the
-- rates: a pattern's prefix is one of the model name's prefixes, so both kinds of row are found by
-- equality on rates_lookup (provider, currency, model_prefix), however large the imported catalogue.
pub AS (
    SELECT m.g, r.rate_id, NOT r.is_pattern AS exact, length(r.model_prefix) AS plen, r.min_input_tokens,
           r.effective_from, r.price_input, r.price_cached_input, r.price_cache_write, r.price_cache_write_1h,
           r.price_output, r.price_reasoning, r.provider = m.provider AS pexact
    FROM models AS m
    JOIN model_names AS n ON n.g = m.g
    CROSS JOIN LATERAL (
        SELECT * FROM rates AS x
        WHERE x.provider = n.name AND x.currency = m.currency AND x.model_prefix = m.model AND NOT x.is_pattern
        UNION ALL
        SELECT * FROM rates AS x
        WHERE x.provider = n.name AND x.currency = m.currency AND x.is_pattern
          AND x.model_prefix = ANY (ARRAY(SELECT left(m.model, k) FROM generate_series(0, length(m.model)) AS k))
    ) AS r
    WHERE r.org_id IS NULL
      AND coalesce(r.service_tier, '') = m.tier
      AND r.effective_from <= m.max_at
),
-- custom rows of the batch's orgs matching a key's model, in any tier (step 2 looks at all of them);
-- found by index on the org (rates_key), as the public ones by model
cust_any AS MATERIALIZED (
    SELECT k.org_id, k.provider, k.model, k.tier, coalesce(r.service_tier, '') = k.tier AS tier_ok,
           r.rate_id, NOT r.is_pattern AS exact, length(r.model_prefix) AS plen, r.min_input_tokens,
           r.effective_from, r.price_input, r.price_cached_input, r.price_cache_write, r.price_cache_write_1h,
           r.price_output, r.price_reasoning, r.provider = k.provider AS pexact
    FROM keys AS k
    CROSS JOIN LATERAL (
        SELECT * FROM rates AS x WHERE x.org_id = k.org_id AND x.provider IN (k.provider, k.alias)
    ) AS r
    WHERE r.currency = k.currency
      AND r.effective_from <= k.max_at
      AND r.model_prefix = CASE WHEN r.is_pattern THEN left(k.model, length(r.model_prefix)) ELSE k.model END
),
-- 2: the keys whose org has custom rows for the model, and from when (negative ids: apart from models)
custom_keys AS MATERIALIZED (
    SELECT -row_number() OVER () AS g, org_id, provider, model, tier, min(effective_from) AS since
    FROM cust_any
    GROUP BY org_id, provider, model, tier
),
cand AS (
    SELECT * FROM pub
    UNION ALL
    SELECT ck.g, c.rate_id, c.exact, c.plen, c.min_input_tokens, c.effective_from, c.price_input,
           c.price_cached_input, c.price_cache_write, c.price_cache_write_1h, c.price_output, c.price_reasoning,
           c.pexact
    FROM cust_any AS c
    JOIN custom_keys AS ck USING (org_id, provider, model, tier)
    WHERE c.tier_ok
),
-- the instants and the input sizes at which a winner may change
epochs AS (
    SELECT g, at AS from_at, coalesce(lead(at) OVER (PARTITION BY g ORDER BY at), 'infinity'::timestamptz) AS to_at
    FROM (SELECT DISTINCT g, effective_from AS at FROM cand) AS b
),
steps AS (
    SELECT g, lo, coalesce(lead(lo) OVER (PARTITION BY g ORDER BY lo) - 1, 9223372036854775807) AS hi
    FROM (SELECT g, min_input_tokens AS lo FROM cand UNION SELECT g, 0 FROM cand) AS s
),
-- the winner of each cell: one hash join, then the order of steps 4-6
won AS MATERIALIZED (
    SELECT DISTINCT ON (e.g, e.from_at, s.lo)
           e.g, e.from_at, e.to_at, s.lo, s.hi, c.rate_id,
           c.price_input, c.price_cached_input, c.price_cache_write, c.price_cache_write_1h,
           c.price_output, c.price_reasoning
    FROM epochs AS e
    JOIN steps AS s USING (g)
    JOIN cand AS c
      ON c.g = e.g
     AND c.effective_from <= e.from_at        -- 1: in force
     AND c.min_input_tokens <= s.lo           -- 5: threshold reached
    ORDER BY e.g, e.from_at, s.lo,
             c.exact DESC,                    -- 4: exact, then the longest prefix
             c.plen DESC,
             c.min_input_tokens DESC,         -- 5: the largest threshold
             c.effective_from DESC,           -- 6: the latest
             c.pexact DESC                    -- rows under the event's own provider name over its alias's
),
-- unit prices with the fallbacks, and per token (* 0.000001: multiplication is exact, never rounded)
unit AS MATERIALIZED (
    SELECT g, from_at, to_at, lo, hi, rate_id, p.*,
           p.p_input * 0.000001 AS u_input, p.p_cached_input * 0.000001 AS u_cached_input,
           p.p_cache_write * 0.000001 AS u_cache_write, p.p_cache_write_1h * 0.000001 AS u_cache_write_1h,
           p.p_output * 0.000001 AS u_output, p.p_reasoning * 0.000001 AS u_reasoning
    FROM won
    CROSS JOIN LATERAL (
        SELECT price_input                                                      AS p_input,
               coalesce(price_cached_input, price_input)                        AS p_cached_input,
               coalesce(price_cache_write, price_input)                         AS p_cache_write,
               coalesce(price_cache_write_1h, price_cache_write, price_input)   AS p_cache_write_1h,
               price_output                                                     AS p_output,
               coalesce(price_reasoning, price_output)                          AS p_reasoning
    ) AS p
),
-- each special org: the intervals of its adjustments (NULL before the first, and for an org with none)
adj AS MATERIALIZED (
    SELECT o.org_id, coalesce(a.effective_from, '-infinity'::timestamptz) AS from_at,
           coalesce(lead(a.effective_from) OVER (PARTITION BY o.org_id ORDER BY a.effective_from),
                    'infinity'::timestamptz) AS to_at,
           a.percent,
           (100 + a.percent) * 0.01 AS factor
    FROM orgs_in AS o
    LEFT JOIN org_adjustments AS a ON a.org_id = o.org_id
    WHERE o.special
    UNION ALL
    SELECT org_id, '-infinity'::timestamptz, min(effective_from), NULL, NULL
    FROM org_adjustments
    WHERE org_id IN (SELECT org_id FROM orgs_in WHERE special)
    GROUP BY org_id
),
applied AS MATERIALIZED (
    -- every other org: the model's cells as they are
    SELECT '' AS scope, m.provider, m.model, m.tier, m.currency, u.from_at, u.to_at, u.lo, u.hi, u.rate_id,
           NULL::numeric AS adjustment_pct,
           u.p_input, u.p_cached_input, u.p_cache_write, u.p_cache_write_1h, u.p_output, u.p_reasoning,
           u.u_input, u.u_cached_input, u.u_cache_write, u.u_cache_write_1h, u.u_output, u.u_reasoning
    FROM models AS m
    JOIN unit AS u ON u.g = m.g
    WHERE m.currency = 'USD'
    UNION ALL
    -- special orgs: public cells per key, cut where the org's custom rows take over, split by its adjustments
    SELECT k.org_id, k.provider, k.model, k.tier, k.currency,
           greatest(u.from_at, a.from_at) AS from_at,
           least(u.to_at, a.to_at, coalesce(ck.since, 'infinity'::timestamptz)) AS to_at,
           u.lo, u.hi, u.rate_id, a.percent AS adjustment_pct,
           coalesce(u.p_input * a.factor, u.p_input)                   AS p_input,
           coalesce(u.p_cached_input * a.factor, u.p_cached_input)     AS p_cached_input,
           coalesce(u.p_cache_write * a.factor, u.p_cache_write)       AS p_cache_write,
           coalesce(u.p_cache_write_1h * a.factor, u.p_cache_write_1h) AS p_cache_write_1h,
           coalesce(u.p_output * a.factor, u.p_output)                 AS p_output,
           coalesce(u.p_reasoning * a.factor, u.p_reasoning)           AS p_reasoning,
           coalesce(u.u_input * a.factor, u.u_input)                   AS u_input,
           coalesce(u.u_cached_input * a.factor, u.u_cached_input)     AS u_cached_input,
           coalesce(u.u_cache_write * a.factor, u.u_cache_write)       AS u_cache_write,
           coalesce(u.u_cache_write_1h * a.factor, u.u_cache_write_1h) AS u_cache_write_1h,
           coalesce(u.u_output * a.factor, u.u_output)                 AS u_output,
           coalesce(u.u_reasoning * a.factor, u.u_reasoning)           AS u_reasoning
    FROM keys AS k
    JOIN models AS m USING (provider, model, tier, currency)
    JOIN unit AS u ON u.g = m.g
    JOIN adj AS a ON a.org_id = k.org_id AND a.from_at < u.to_at AND a.to_at > u.from_at
    LEFT JOIN custom_keys AS ck
      ON ck.org_id = k.org_id AND ck.provider = k.provider AND ck.model = k.model AND ck.tier = k.tier
    WHERE greatest(u.from_at, a.from_at) < least(u.to_at, a.to_at, coalesce(ck.since, 'infinity'::timestamptz))
    UNION ALL
    -- custom cells (net prices: no adjustment), from the first custom row on
    SELECT ck.org_id, ck.provider, ck.model, ck.tier, k.currency, u.from_at, u.to_at, u.lo, u.hi, u.rate_id, NULL,
           u.p_input, u.p_cached_input, u.p_cache_write, u.p_cache_write_1h, u.p_output, u.p_reasoning,
           u.u_input, u.u_cached_input, u.u_cache_write, u.u_cache_write_1h, u.u_output, u.u_reasoning
    FROM custom_keys AS ck
    JOIN keys AS k USING (org_id, provider, model, tier)
    JOIN unit AS u ON u.g = ck.g
)

-- name: insert_priced
-- Every row of {source} (the event columns, unpriced) into {target} with its pricing: the cell it falls
-- in (scope, provider, model, tier, then the time and input ranges; none = unpriced, every pricing
-- column NULL), the applied unit prices and the exact cost per category. u_* are per-token prices, so a
-- cost is one exact multiplication; a zero quantity costs 0 without one (most events have no cache
-- writes or reasoning). The costs are computed once in the inner query (OFFSET 0 keeps the planner from
-- inlining it, which would compute each product twice) and summed outside. The carried columns
-- (billing.pricing.priced_insert's `carry`; none by default) are copied as they are.
INSERT INTO {target} (
    event_id, org_id, user_id, session_id, request_type, provider, model, service_tier, status, estimated,
    latency_ms, reservation_id, tags, extra, occurred_at, received_at, usage_month, billing_month,
    input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
    reasoning_tokens, provider_cost,
    currency, rate_id, adjustment_pct, price_input, price_cached_input, price_cache_write, price_cache_write_1h,
    price_output, price_reasoning, cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h,
    cost_output, cost_reasoning, cost_total, priced_at{carry})
SELECT event_id, org_id, user_id, session_id, request_type, provider, model, service_tier, status, estimated,
       latency_ms, reservation_id, tags, extra, occurred_at, received_at, usage_month, billing_month,
       input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
       reasoning_tokens, provider_cost,
       currency, rate_id, adjustment_pct, p_input, p_cached_input, p_cache_write, p_cache_write_1h,
       p_output, p_reasoning, c_input, c_cached_input, c_cache_write, c_cache_write_1h, c_output, c_reasoning,
       c_input + c_cached_input + c_cache_write + c_cache_write_1h + c_output + c_reasoning,
       CASE WHEN rate_id IS NOT NULL THEN now() END{carry}
FROM (
    SELECT t.event_id, t.org_id, t.user_id, t.session_id, t.request_type, t.provider, t.model, t.service_tier,
           t.status, t.estimated, t.latency_ms, t.reservation_id, t.tags, t.extra, t.occurred_at, t.received_at,
           t.usage_month, t.billing_month, t.input_tokens, t.cached_input_tokens, t.cache_write_tokens,
           t.cache_write_1h_tokens, t.output_tokens, t.reasoning_tokens, t.provider_cost,
           a.currency, a.rate_id, a.adjustment_pct, a.p_input, a.p_cached_input, a.p_cache_write,
           a.p_cache_write_1h, a.p_output, a.p_reasoning,
           (t.input_tokens - t.cached_input_tokens - t.cache_write_tokens) * a.u_input AS c_input,
           CASE WHEN a.rate_id IS NULL THEN NULL WHEN t.cached_input_tokens = 0 THEN 0
                ELSE t.cached_input_tokens * a.u_cached_input END AS c_cached_input,
           CASE WHEN a.rate_id IS NULL THEN NULL WHEN t.cache_write_tokens = t.cache_write_1h_tokens THEN 0
                ELSE (t.cache_write_tokens - t.cache_write_1h_tokens) * a.u_cache_write END AS c_cache_write,
           CASE WHEN a.rate_id IS NULL THEN NULL WHEN t.cache_write_1h_tokens = 0 THEN 0
                ELSE t.cache_write_1h_tokens * a.u_cache_write_1h END AS c_cache_write_1h,
           (t.output_tokens - t.reasoning_tokens) * a.u_output AS c_output,
           CASE WHEN a.rate_id IS NULL THEN NULL WHEN t.reasoning_tokens = 0 THEN 0
                ELSE t.reasoning_tokens * a.u_reasoning END AS c_reasoning{t_carry}
    FROM {source} AS t
    LEFT JOIN applied AS a
      ON a.scope = CASE WHEN t.org_id = ANY (ARRAY(SELECT org_id FROM orgs_in WHERE special)) THEN t.org_id
                        ELSE '' END
     AND a.provider = t.provider
     AND a.model = t.model
     AND a.tier = coalesce(t.service_tier, '')
     AND t.occurred_at >= a.from_at AND t.occurred_at < a.to_at
     AND t.input_tokens >= a.lo AND t.input_tokens <= a.hi
    OFFSET 0
) AS priced

-- name: take_rows
-- price_rows: the rows of the table, taken out to be put back priced (the resolution above read them first)
, unpriced_rows AS (DELETE FROM {target} RETURNING *)

-- name: cells_select
SELECT nullif(scope, '') AS org_id, provider, model, nullif(tier, '') AS service_tier, from_at,
       nullif(to_at, 'infinity'::timestamptz) AS to_at, lo, hi, currency, rate_id,
       adjustment_pct, p_input, p_cached_input, p_cache_write, p_cache_write_1h, p_output, p_reasoning
FROM applied
ORDER BY scope, provider, model, tier, currency, from_at, lo
