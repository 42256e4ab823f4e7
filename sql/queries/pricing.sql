-- Pricing: resolve the rate of every row of a batch table and cost it, set-based.
--
-- Rates are resolved once per distinct (org, provider, model, tier) of the batch, not per event: the
-- candidate rows of a key are few, and the winner only changes at a candidate's effective_from (or the
-- start of the org's custom rows, or an org adjustment) and at a candidate's min_input_tokens. So each
-- key is cut into cells [from_at, to_at) x [lo, hi] inside which one rate wins; each cell is resolved by
-- the rule of DESIGN.md once, and every event is joined to its cell by equality + range (a hash join).
--
-- `cells` is the shared CTE chain (pricing.py appends `price_update` or `cells_select` to it);
-- {table} is the batch table (LIKE events).

-- name: cells
WITH keys AS MATERIALIZED (
    SELECT row_number() OVER () AS k, b.org_id, b.provider, b.model, b.tier, b.max_at,
           coalesce(o.currency, 'USD') AS currency
    FROM (SELECT t.org_id, t.provider, t.model, coalesce(t.service_tier, '') AS tier, max(t.occurred_at) AS max_at
          FROM {table} AS t
          GROUP BY 1, 2, 3, 4) AS b
    LEFT JOIN orgs AS o ON o.org_id = b.org_id
),
-- every rate row that could price some event of a key (1: in force by the key's latest event, in the
-- org's currency; 2: public or this org's; model exact or prefix), in any tier
cand AS MATERIALIZED (
    SELECT k.k, r.rate_id, (r.org_id IS NOT NULL) AS custom, coalesce(r.service_tier, '') = k.tier AS tier_ok,
           NOT r.is_pattern AS exact, length(r.model_prefix) AS plen, r.min_input_tokens, r.effective_from,
           r.price_input, r.price_cached_input, r.price_cache_write, r.price_cache_write_1h,
           r.price_output, r.price_reasoning
    FROM keys AS k
    JOIN rates AS r
      ON r.provider = k.provider
     AND r.currency = k.currency
     AND (r.org_id IS NULL OR r.org_id = k.org_id)
     AND r.effective_from <= k.max_at
     AND r.model_prefix = CASE WHEN r.is_pattern THEN left(k.model, length(r.model_prefix)) ELSE k.model END
),
-- 2: from when the org's custom rows take over for this model (any tier, any threshold)
custom AS MATERIALIZED (
    SELECT k, min(effective_from) AS since FROM cand WHERE custom GROUP BY k
),
-- the instants at which the winner of a key may change
bounds AS (
    SELECT k, effective_from AS at FROM cand WHERE tier_ok
    UNION
    SELECT k, since FROM custom
    UNION
    SELECT k.k, a.effective_from
    FROM keys AS k
    JOIN org_adjustments AS a ON a.org_id = k.org_id AND a.effective_from <= k.max_at
),
epochs AS (
    SELECT k, at AS from_at, coalesce(lead(at) OVER (PARTITION BY k ORDER BY at), 'infinity'::timestamptz) AS to_at
    FROM bounds
),
-- the input sizes at which the winner may change (long-context thresholds)
steps AS (
    SELECT k, lo, coalesce(lead(lo) OVER (PARTITION BY k ORDER BY lo) - 1, 9223372036854775807) AS hi
    FROM (SELECT k, min_input_tokens AS lo FROM cand WHERE tier_ok
          UNION
          SELECT k, 0 FROM keys) AS s
),
grid AS (
    SELECT e.k, e.from_at, e.to_at, s.lo, s.hi, coalesce(cu.since <= e.from_at, false) AS use_custom
    FROM epochs AS e
    JOIN steps AS s USING (k)
    LEFT JOIN custom AS cu USING (k)
),
-- the winner of each cell: a hash join on the key, then the order of steps 4-6 (not a per-cell scan)
cells AS MATERIALIZED (
    SELECT DISTINCT ON (g.k, g.from_at, g.lo)
           g.k, g.from_at, g.to_at, g.lo, g.hi, c.rate_id, c.custom,
           c.price_input, c.price_cached_input, c.price_cache_write, c.price_cache_write_1h,
           c.price_output, c.price_reasoning
    FROM grid AS g
    JOIN cand AS c
      ON c.k = g.k
     AND c.tier_ok                            -- 3: the event's tier
     AND c.effective_from <= g.from_at        -- 1: in force
     AND c.custom = g.use_custom              -- 2: custom over public
     AND c.min_input_tokens <= g.lo           -- 5: threshold reached
    ORDER BY g.k, g.from_at, g.lo,
             c.exact DESC,                    -- 4: exact, then the longest prefix
             c.plen DESC,
             c.min_input_tokens DESC,         -- 5: the largest threshold
             c.effective_from DESC            -- 6: the latest
),
applied AS MATERIALIZED (
    -- unit prices as applied: fallbacks, then the org's adjustment (public rows only). `* 0.01` and
    -- `* 0.000001` rather than divisions: numeric multiplication is exact, a division may round.
    SELECT k.org_id, k.provider, k.model, k.tier, k.currency, c.from_at, c.to_at, c.lo, c.hi, c.rate_id,
           adj.percent AS adjustment_pct, p.*,
           p.p_input * 0.000001 AS u_input, p.p_cached_input * 0.000001 AS u_cached_input,
           p.p_cache_write * 0.000001 AS u_cache_write, p.p_cache_write_1h * 0.000001 AS u_cache_write_1h,
           p.p_output * 0.000001 AS u_output, p.p_reasoning * 0.000001 AS u_reasoning
    FROM cells AS c
    JOIN keys AS k USING (k)
    LEFT JOIN LATERAL (
        SELECT a.percent
        FROM org_adjustments AS a
        WHERE a.org_id = k.org_id AND a.effective_from <= c.from_at
        ORDER BY a.effective_from DESC
        LIMIT 1
    ) AS adj ON NOT c.custom
    CROSS JOIN LATERAL (SELECT coalesce((100 + adj.percent) * 0.01, 1) AS f) AS f
    CROSS JOIN LATERAL (
        SELECT c.price_input * f.f                                                          AS p_input,
               coalesce(c.price_cached_input, c.price_input) * f.f                          AS p_cached_input,
               coalesce(c.price_cache_write, c.price_input) * f.f                           AS p_cache_write,
               coalesce(c.price_cache_write_1h, c.price_cache_write, c.price_input) * f.f   AS p_cache_write_1h,
               c.price_output * f.f                                                         AS p_output,
               coalesce(c.price_reasoning, c.price_output) * f.f                            AS p_reasoning
    ) AS p
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
WHERE a.org_id = t.org_id
  AND a.provider = t.provider
  AND a.model = t.model
  AND a.tier = coalesce(t.service_tier, '')
  AND t.occurred_at >= a.from_at AND t.occurred_at < a.to_at
  AND t.input_tokens >= a.lo AND t.input_tokens <= a.hi

-- name: cells_select
SELECT org_id, provider, model, nullif(tier, '') AS service_tier, from_at,
       nullif(to_at, 'infinity'::timestamptz) AS to_at, lo, hi, currency, rate_id,
       adjustment_pct, p_input, p_cached_input, p_cache_write, p_cache_write_1h, p_output, p_reasoning
FROM applied
ORDER BY org_id, provider, model, tier, from_at, lo
