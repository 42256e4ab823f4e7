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
    SELECT b.org_id, b.provider, b.model, b.tier, b.max_at, coalesce(o.currency, 'USD') AS currency
    FROM (SELECT t.org_id, t.provider, t.model, coalesce(t.service_tier, '') AS tier, max(t.occurred_at) AS max_at
          FROM {table} AS t
          GROUP BY 1, 2, 3, 4) AS b
    LEFT JOIN orgs AS o ON o.org_id = b.org_id
),
-- every rate row that could price some event of a key (1: in force by the key's latest event, in the
-- org's currency; 2: public or this org's; model exact or prefix), in any tier
cand AS MATERIALIZED (
    SELECT k.org_id, k.provider, k.model, k.tier, k.currency,
           r.rate_id, (r.org_id IS NOT NULL) AS custom, coalesce(r.service_tier, '') = k.tier AS tier_ok,
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
custom AS (
    SELECT org_id, provider, model, tier, min(effective_from) AS since
    FROM cand
    WHERE custom
    GROUP BY 1, 2, 3, 4
),
-- the instants at which the winner of a key may change
bounds AS (
    SELECT org_id, provider, model, tier, effective_from AS at FROM cand WHERE tier_ok
    UNION
    SELECT org_id, provider, model, tier, since FROM custom
    UNION
    SELECT k.org_id, k.provider, k.model, k.tier, a.effective_from
    FROM keys AS k
    JOIN org_adjustments AS a ON a.org_id = k.org_id AND a.effective_from <= k.max_at
),
epochs AS (
    SELECT org_id, provider, model, tier, at AS from_at,
           coalesce(lead(at) OVER (PARTITION BY org_id, provider, model, tier ORDER BY at),
                    'infinity'::timestamptz) AS to_at
    FROM bounds
),
-- the input sizes at which the winner may change (long-context thresholds)
steps AS (
    SELECT org_id, provider, model, tier, lo,
           coalesce(lead(lo) OVER (PARTITION BY org_id, provider, model, tier ORDER BY lo) - 1,
                    9223372036854775807) AS hi
    FROM (SELECT org_id, provider, model, tier, min_input_tokens AS lo FROM cand WHERE tier_ok
          UNION
          SELECT org_id, provider, model, tier, 0 FROM keys) AS s
),
cells AS (
    SELECT e.org_id, e.provider, e.model, e.tier, e.from_at, e.to_at, s.lo, s.hi,
           w.currency, w.rate_id, w.custom, adj.percent AS adjustment_pct,
           -- 100 + pct then * 0.01: exact (numeric multiplication never rounds, a division might)
           coalesce((100 + adj.percent) * 0.01, 1) AS factor,
           w.price_input, w.price_cached_input, w.price_cache_write, w.price_cache_write_1h,
           w.price_output, w.price_reasoning
    FROM epochs AS e
    JOIN steps AS s USING (org_id, provider, model, tier)
    LEFT JOIN custom AS cu USING (org_id, provider, model, tier)
    CROSS JOIN LATERAL (
        SELECT c.*
        FROM cand AS c
        WHERE c.org_id = e.org_id AND c.provider = e.provider AND c.model = e.model AND c.tier = e.tier
          AND c.tier_ok                                                   -- 3: the event's tier
          AND c.effective_from <= e.from_at                               -- 1: in force
          AND c.custom = (cu.since IS NOT NULL AND cu.since <= e.from_at) -- 2: custom over public
          AND c.min_input_tokens <= s.lo                                  -- 5: threshold reached
        ORDER BY c.exact DESC,                                            -- 4: exact, longest prefix
                 c.plen DESC,
                 c.min_input_tokens DESC,                                 -- 5: largest threshold
                 c.effective_from DESC                                    -- 6: latest
        LIMIT 1
    ) AS w
    LEFT JOIN LATERAL (
        SELECT a.percent
        FROM org_adjustments AS a
        WHERE a.org_id = e.org_id AND a.effective_from <= e.from_at
        ORDER BY a.effective_from DESC
        LIMIT 1
    ) AS adj ON NOT w.custom
),
applied AS (
    -- unit prices as applied: fallbacks, then the org's adjustment (public rows only)
    SELECT org_id, provider, model, tier, from_at, to_at, lo, hi, currency, rate_id, adjustment_pct,
           price_input * factor                                                      AS p_input,
           coalesce(price_cached_input, price_input) * factor                        AS p_cached_input,
           coalesce(price_cache_write, price_input) * factor                         AS p_cache_write,
           coalesce(price_cache_write_1h, price_cache_write, price_input) * factor   AS p_cache_write_1h,
           price_output * factor                                                     AS p_output,
           coalesce(price_reasoning, price_output) * factor                          AS p_reasoning
    FROM cells
)

-- name: price_update
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
    -- quantity * price / 1e6, written as * 0.000001 so the result is exact (never rounded)
    cost_input           = (t.input_tokens - t.cached_input_tokens - t.cache_write_tokens) * a.p_input * 0.000001,
    cost_cached_input    = t.cached_input_tokens * a.p_cached_input * 0.000001,
    cost_cache_write     = (t.cache_write_tokens - t.cache_write_1h_tokens) * a.p_cache_write * 0.000001,
    cost_cache_write_1h  = t.cache_write_1h_tokens * a.p_cache_write_1h * 0.000001,
    cost_output          = (t.output_tokens - t.reasoning_tokens) * a.p_output * 0.000001,
    cost_reasoning       = t.reasoning_tokens * a.p_reasoning * 0.000001,
    cost_total           = ((t.input_tokens - t.cached_input_tokens - t.cache_write_tokens) * a.p_input
                            + t.cached_input_tokens * a.p_cached_input
                            + (t.cache_write_tokens - t.cache_write_1h_tokens) * a.p_cache_write
                            + t.cache_write_1h_tokens * a.p_cache_write_1h
                            + (t.output_tokens - t.reasoning_tokens) * a.p_output
                            + t.reasoning_tokens * a.p_reasoning) * 0.000001,
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
