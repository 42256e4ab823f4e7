-- Rate tables: imports (validated in Python, checked and inserted set-based here), listings, gaps,
-- and the org pricing settings.

-- name: lock_rates
-- One import at a time (its conflict check and insert must see the same table); pricing only reads
-- rates and is not blocked by this mode.
LOCK TABLE rates IN SHARE ROW EXCLUSIVE MODE

-- name: create_import
CREATE TEMP TABLE IF NOT EXISTS rates_import (
    line                 integer NOT NULL,
    org_id               text,
    provider             text NOT NULL,
    model                text NOT NULL,
    effective_from       timestamptz NOT NULL,
    currency             char(3) NOT NULL,
    service_tier         text,
    min_input_tokens     bigint NOT NULL,
    price_input          numeric NOT NULL,
    price_cached_input   numeric,
    price_cache_write    numeric,
    price_cache_write_1h numeric,
    price_output         numeric NOT NULL,
    price_reasoning      numeric,
    source               text NOT NULL,
    source_date          date
) ON COMMIT DROP

-- name: copy_import
COPY rates_import (line, org_id, provider, model, effective_from, currency, service_tier, min_input_tokens,
                   price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
                   price_reasoning, source, source_date) FROM STDIN

-- name: import_conflicts
-- Keys that exist already with other prices: (line, rate_id). Numeric equality, so 2.50 = 2.5.
SELECT i.line, r.rate_id
FROM rates_import AS i
JOIN rates AS r
  ON r.org_id IS NOT DISTINCT FROM i.org_id
 AND r.provider = i.provider
 AND r.model = i.model
 AND r.service_tier IS NOT DISTINCT FROM i.service_tier
 AND r.min_input_tokens = i.min_input_tokens
 AND r.currency = i.currency
 AND r.effective_from = i.effective_from
WHERE (r.price_input, r.price_cached_input, r.price_cache_write, r.price_cache_write_1h, r.price_output,
       r.price_reasoning)
      IS DISTINCT FROM
      (i.price_input, i.price_cached_input, i.price_cache_write, i.price_cache_write_1h, i.price_output,
       i.price_reasoning)
ORDER BY i.line

-- name: insert_import
INSERT INTO rates (org_id, provider, model, effective_from, currency, service_tier, min_input_tokens,
                   price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
                   price_reasoning, source, source_date)
SELECT org_id, provider, model, effective_from, currency, service_tier, min_input_tokens,
       price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
       price_reasoning, source, source_date
FROM rates_import
ORDER BY line
ON CONFLICT ON CONSTRAINT rates_key DO NOTHING

-- name: drop_import
DROP TABLE IF EXISTS rates_import

-- name: analyze_rates
ANALYZE rates

-- name: list_rates
-- %(model)s: rows that could price that model (exact name, or a pattern it starts with).
SELECT rate_id, coalesce(org_id, '') AS org_id, provider, model, effective_from, currency,
       coalesce(service_tier, '') AS service_tier, min_input_tokens,
       price_input AS input, price_cached_input AS cached_input, price_cache_write AS cache_write,
       price_cache_write_1h AS cache_write_1h, price_output AS output, price_reasoning AS reasoning,
       source, source_date, created_at
FROM rates
WHERE (%(model)s::text IS NULL
       OR model = %(model)s::text
       OR (is_pattern AND left(%(model)s::text, length(model_prefix)) = model_prefix))
  AND (%(provider)s::text IS NULL OR provider = %(provider)s::text)
  AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s::text)
ORDER BY provider, model, org_id NULLS FIRST, coalesce(service_tier, ''), currency, min_input_tokens, effective_from

-- name: missing
SELECT provider, model, events, orgs, input_tokens, output_tokens, tokens, first_seen, last_seen
FROM unpriced_usage
ORDER BY events DESC, provider, model

-- name: set_currency
INSERT INTO orgs (org_id, currency) VALUES (%(org_id)s, %(currency)s)
ON CONFLICT (org_id) DO UPDATE SET currency = EXCLUDED.currency

-- name: insert_adjustment
-- Returns the percent in force at that instant and whether this call added it.
WITH added AS (
    INSERT INTO org_adjustments (org_id, effective_from, percent, note)
    VALUES (%(org_id)s, %(effective_from)s, %(percent)s, %(note)s)
    ON CONFLICT (org_id, effective_from) DO NOTHING
    RETURNING percent
)
SELECT percent, true FROM added
UNION ALL
SELECT percent, false FROM org_adjustments
WHERE org_id = %(org_id)s AND effective_from = %(effective_from)s AND NOT EXISTS (SELECT 1 FROM added)

-- name: org_row
SELECT org_id, currency, name, created_at FROM orgs WHERE org_id = %(org_id)s

-- name: org_adjustments
SELECT effective_from, percent, note, created_at FROM org_adjustments WHERE org_id = %(org_id)s ORDER BY effective_from
