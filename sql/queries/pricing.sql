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
-- `cells` is the shared CTE chain (pricing.py appends `price_update` or `cells_select` to it);
-- {table} is the batch table (LIKE events).

-- name: cells
WITH orgs_in AS MATERIALIZED (
    SELECT b.org_id, coalesce(o.currency, 'USD') AS currency,
           coalesce(o.currency, 'USD') <> 'USD' OR x.org_id IS NOT NULL AS special
    FROM (SELECT DISTINCT org_id FROM {table}) AS b
    LEFT JOIN orgs AS o ON o.org_id = b.org_id
    -- one pass over each table, not a probe per org
    LEFT JOIN (SELECT org_id FROM org_adjustments
               UNION
               SELECT org_id FROM rates WHERE org_id IS NOT NULL) AS x ON x.org_id = b.org_id
),
-- an event's scope: its org when special, else '' (the special orgs as an array, computed once, so
-- that each event finds its scope without a join)
groups AS MATERIALIZED (
    SELECT g.scope, g.provider, g.model, g.tier, coalesce(o.currency, 'USD') AS currency, g.max_at
    FROM (SELECT CASE WHEN t.org_id = ANY (ARRAY(SELECT org_id FROM orgs_in WHERE special)) THEN t.org_id
                      ELSE '' END AS scope,
                 t.provider, t.model, coalesce(t.service_tier, '') AS tier, max(t.occurred_at) AS max_at
          FROM {table} AS t
          GROUP BY 1, 2, 3, 4) AS g
    LEFT JOIN orgs_in AS o ON o.org_id = g.scope
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
-- public candidates of each model (1: in force by its latest event, in the currency; 3: the tier;
-- the model exact or by prefix)
pub AS (
    SELECT m.g, r.rate_id, NOT r.is_pattern AS exact, length(r.model_prefix) AS plen, r.min_input_tokens,
           r.effective_from, r.price_input, r.price_cached_input, r.price_cache_write, r.price_cache_write_1h,
           r.price_output, r.price_reasoning, r.provider = m.provider AS pexact
    FROM models AS m
    JOIN rates AS r
      ON r.org_id IS NULL
     AND r.provider IN (m.provider, m.alias)
     AND r.currency = m.currency
     AND coalesce(r.service_tier, '') = m.tier
     AND r.effective_from <= m.max_at
     AND r.model_prefix = CASE WHEN r.is_pattern THEN left(m.model, length(r.model_prefix)) ELSE m.model END
),
-- custom rows of the batch's orgs matching a key's model, in any tier (step 2 looks at all of them)
cust_any AS MATERIALIZED (
    SELECT k.org_id, k.provider, k.model, k.tier, coalesce(r.service_tier, '') = k.tier AS tier_ok,
           r.rate_id, NOT r.is_pattern AS exact, length(r.model_prefix) AS plen, r.min_input_tokens,
           r.effective_from, r.price_input, r.price_cached_input, r.price_cache_write, r.price_cache_write_1h,
           r.price_output, r.price_reasoning, r.provider = k.provider AS pexact
    FROM keys AS k
    JOIN rates AS r
      ON r.org_id = k.org_id
     AND r.provider IN (k.provider, k.alias)
     AND r.currency = k.currency
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

-- name: price_update
-- u_* are per-token prices, so a cost is one exact multiplication; a zero quantity costs 0 without one
-- (most events have no cache writes or reasoning).
UPDATE {table} AS t
SET currency             = a.currency,
    rate_id              = a.rate_id,
    adjustment_pct       = a.adjustment_pct,
    price_input          = a.p_input,
    price_cached_input   = a.p_cached_input,
    price_cache_write    = a.p_cache_write,
    price_cache_write_1h = a.p_cache_write_1h,
    price_output         = a.p_output,
    price_reasoning      = a.p_reasoning,
    cost_input           = (t.input_tokens - t.cached_input_tokens - t.cache_write_tokens) * a.u_input,
    cost_cached_input    = CASE WHEN t.cached_input_tokens = 0 THEN 0
                                ELSE t.cached_input_tokens * a.u_cached_input END,
    cost_cache_write     = CASE WHEN t.cache_write_tokens = 0 THEN 0
                                ELSE (t.cache_write_tokens - t.cache_write_1h_tokens) * a.u_cache_write END,
    cost_cache_write_1h  = CASE WHEN t.cache_write_1h_tokens = 0 THEN 0
                                ELSE t.cache_write_1h_tokens * a.u_cache_write_1h END,
    cost_output          = (t.output_tokens - t.reasoning_tokens) * a.u_output,
    cost_reasoning       = CASE WHEN t.reasoning_tokens = 0 THEN 0 ELSE t.reasoning_tokens * a.u_reasoning END,
    cost_total           = (t.input_tokens - t.cached_input_tokens - t.cache_write_tokens) * a.u_input
                           + (t.output_tokens - t.reasoning_tokens) * a.u_output
                           + CASE WHEN t.cached_input_tokens = 0 THEN 0
                                  ELSE t.cached_input_tokens * a.u_cached_input END
                           + CASE WHEN t.cache_write_tokens = 0 THEN 0
                                  ELSE (t.cache_write_tokens - t.cache_write_1h_tokens) * a.u_cache_write
                                       + t.cache_write_1h_tokens * a.u_cache_write_1h END
                           + CASE WHEN t.reasoning_tokens = 0 THEN 0 ELSE t.reasoning_tokens * a.u_reasoning END,
    priced_at            = now()
FROM applied AS a
WHERE a.scope = CASE WHEN t.org_id = ANY (ARRAY(SELECT org_id FROM orgs_in WHERE special)) THEN t.org_id ELSE '' END
  AND a.provider = t.provider
  AND a.model = t.model
  AND a.tier = coalesce(t.service_tier, '')
  AND t.occurred_at >= a.from_at AND t.occurred_at < a.to_at
  AND t.input_tokens >= a.lo AND t.input_tokens <= a.hi

-- name: cells_select
SELECT nullif(scope, '') AS org_id, provider, model, nullif(tier, '') AS service_tier, from_at,
       nullif(to_at, 'infinity'::timestamptz) AS to_at, lo, hi, currency, rate_id,
       adjustment_pct, p_input, p_cached_input, p_cache_write, p_cache_write_1h, p_output, p_reasoning
FROM applied
ORDER BY scope, provider, model, tier, currency, from_at, lo
