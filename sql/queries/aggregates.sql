-- Aggregates: add (sign 1) or remove (sign -1, reprice reversals) the events of a table shaped like
-- events to invoice_usage and usage_daily. One statement per table, rows in primary-key order, so
-- concurrent writers take row locks in the same order and never deadlock; increments are atomic
-- (ON CONFLICT DO UPDATE adds to the committed value), so none is lost.

-- name: add_invoice_usage
-- Priced events only; one row per (org, billing month, usage month, model, category, unit price,
-- currency). The 1-hour cache writes are category cache_write at their own unit price (one row with
-- the 5-minute writes when the prices are equal). Zero quantities are skipped. amount is exact.
INSERT INTO invoice_usage AS t (
    org_id, billing_month, usage_month, model, category, unit_price, currency, quantity, amount, events)
SELECT e.org_id, e.billing_month, e.usage_month, e.model, c.category, c.unit_price, e.currency,
       %(sign)s * sum(c.quantity), %(sign)s * sum(c.amount), %(sign)s * sum(c.counted)
  FROM {table} AS e
 CROSS JOIN LATERAL (VALUES
        ('input', e.price_input, e.input_tokens - e.cached_input_tokens - e.cache_write_tokens, e.cost_input, 1),
        ('cached_input', e.price_cached_input, e.cached_input_tokens, e.cost_cached_input, 1),
        ('cache_write', e.price_cache_write, e.cache_write_tokens - e.cache_write_1h_tokens, e.cost_cache_write, 1),
        -- an event whose 1-hour writes share the 5-minute price is one event of that line, not two
        ('cache_write', e.price_cache_write_1h, e.cache_write_1h_tokens, e.cost_cache_write_1h,
         CASE WHEN e.cache_write_tokens > e.cache_write_1h_tokens
               AND e.price_cache_write_1h = e.price_cache_write THEN 0 ELSE 1 END),
        ('output', e.price_output, e.output_tokens - e.reasoning_tokens, e.cost_output, 1),
        ('reasoning', e.price_reasoning, e.reasoning_tokens, e.cost_reasoning, 1)
       ) AS c (category, unit_price, quantity, amount, counted)
 WHERE e.rate_id IS NOT NULL AND c.quantity > 0
 GROUP BY e.org_id, e.billing_month, e.usage_month, e.model, c.category, c.unit_price, e.currency
 ORDER BY e.org_id, e.billing_month, e.usage_month, e.model, c.category, c.unit_price, e.currency
    ON CONFLICT (org_id, billing_month, usage_month, model, category, unit_price, currency) DO UPDATE
   SET quantity = t.quantity + EXCLUDED.quantity,
       amount   = t.amount + EXCLUDED.amount,
       events   = t.events + EXCLUDED.events

-- name: add_usage_daily
-- Every event (priced or not), per org, UTC day, user ('' for none), provider and model; cost is the
-- priced cost, and unpriced usage is kept in tokens so quota checks can charge it conservatively.
INSERT INTO usage_daily AS t (
    org_id, day, user_id, provider, model, events, unpriced_events, input_tokens, cached_input_tokens,
    cache_write_tokens, output_tokens, reasoning_tokens, unpriced_input_tokens, unpriced_output_tokens, cost)
SELECT e.org_id, (e.occurred_at AT TIME ZONE 'UTC')::date, coalesce(e.user_id, ''), e.provider, e.model,
       %(sign)s * count(*),
       %(sign)s * count(*) FILTER (WHERE e.rate_id IS NULL),
       %(sign)s * sum(e.input_tokens::numeric),
       %(sign)s * sum(e.cached_input_tokens::numeric),
       %(sign)s * sum(e.cache_write_tokens::numeric),
       %(sign)s * sum(e.output_tokens::numeric),
       %(sign)s * sum(e.reasoning_tokens::numeric),
       %(sign)s * coalesce(sum(e.input_tokens::numeric) FILTER (WHERE e.rate_id IS NULL), 0),
       %(sign)s * coalesce(sum(e.output_tokens::numeric) FILTER (WHERE e.rate_id IS NULL), 0),
       %(sign)s * coalesce(sum(e.cost_total), 0)
  FROM {table} AS e
 GROUP BY 1, 2, 3, 4, 5
 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (org_id, day, user_id, provider, model) DO UPDATE
   SET events                 = t.events + EXCLUDED.events,
       unpriced_events        = t.unpriced_events + EXCLUDED.unpriced_events,
       input_tokens           = t.input_tokens + EXCLUDED.input_tokens,
       cached_input_tokens    = t.cached_input_tokens + EXCLUDED.cached_input_tokens,
       cache_write_tokens     = t.cache_write_tokens + EXCLUDED.cache_write_tokens,
       output_tokens          = t.output_tokens + EXCLUDED.output_tokens,
       reasoning_tokens       = t.reasoning_tokens + EXCLUDED.reasoning_tokens,
       unpriced_input_tokens  = t.unpriced_input_tokens + EXCLUDED.unpriced_input_tokens,
       unpriced_output_tokens = t.unpriced_output_tokens + EXCLUDED.unpriced_output_tokens,
       cost                   = t.cost + EXCLUDED.cost
