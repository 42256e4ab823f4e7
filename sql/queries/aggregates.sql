-- Aggregates: add the events of a relation shaped like events to invoice_usage, usage_daily and
-- usage_org_month, each row weighted: +1 for an ingest, -1 to take rows out, or e.sign for a reprice's
-- move (its rows at the old pricing weigh -1, at the new one +1). {n} counts the weighted rows
-- (`count(*)`, `-count(*)` or `sum(e.sign)`), {w} prefixes a summed value ("", "-" or "e.sign * ").
-- One statement per table, rows in primary-key order, so concurrent writers take row locks in the same
-- order and never deadlock (a reprice moves its events with one statement per table too); increments
-- are atomic (ON CONFLICT DO UPDATE adds to the committed value), so none is lost.

-- name: add_invoice_usage
-- Priced events only; one row per (org, billing month, usage month, model, category, unit price,
-- currency). The 1-hour cache writes are category cache_write at their own unit price (one row with
-- the 5-minute writes when the prices are equal). Zero quantities are skipped. amount is exact.
-- The events are first summed per price tuple (few groups), then unpivoted into categories: the
-- unpivot runs over those groups, not over every event.
WITH g AS (
    SELECT org_id, billing_month, usage_month, model, currency,
           price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning,
           sum({w}(input_tokens - cached_input_tokens - cache_write_tokens)) AS q_input,
           sum({w}cost_input) AS a_input,
           coalesce({n} FILTER (WHERE input_tokens > cached_input_tokens + cache_write_tokens), 0) AS n_input,
           sum({w}cached_input_tokens) AS q_cached, sum({w}cost_cached_input) AS a_cached,
           coalesce({n} FILTER (WHERE cached_input_tokens > 0), 0) AS n_cached,
           sum({w}(cache_write_tokens - cache_write_1h_tokens)) AS q_write, sum({w}cost_cache_write) AS a_write,
           coalesce({n} FILTER (WHERE cache_write_tokens > cache_write_1h_tokens), 0) AS n_write,
           sum({w}cache_write_1h_tokens) AS q_write_1h, sum({w}cost_cache_write_1h) AS a_write_1h,
           coalesce({n} FILTER (WHERE cache_write_1h_tokens > 0), 0) AS n_write_1h,
           -- events with both kinds of writes: one event of the line when the two prices are equal
           coalesce({n} FILTER (WHERE cache_write_1h_tokens > 0 AND cache_write_tokens > cache_write_1h_tokens), 0)
               AS n_write_both,
           sum({w}(output_tokens - reasoning_tokens)) AS q_output, sum({w}cost_output) AS a_output,
           coalesce({n} FILTER (WHERE output_tokens > reasoning_tokens), 0) AS n_output,
           sum({w}reasoning_tokens) AS q_reasoning, sum({w}cost_reasoning) AS a_reasoning,
           coalesce({n} FILTER (WHERE reasoning_tokens > 0), 0) AS n_reasoning
      FROM {table} AS e
     WHERE rate_id IS NOT NULL
     GROUP BY org_id, billing_month, usage_month, model, currency,
              price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning
)
INSERT INTO invoice_usage AS t (
    org_id, billing_month, usage_month, model, category, unit_price, currency, quantity, amount, events)
SELECT g.org_id, g.billing_month, g.usage_month, g.model, c.category, c.unit_price, g.currency,
       sum(c.quantity), sum(c.amount), sum(c.n)
  FROM g
 CROSS JOIN LATERAL (VALUES
        ('input', g.price_input, g.q_input, g.a_input, g.n_input),
        ('cached_input', g.price_cached_input, g.q_cached, g.a_cached, g.n_cached),
        ('cache_write', g.price_cache_write, g.q_write, g.a_write, g.n_write),
        ('cache_write', g.price_cache_write_1h, g.q_write_1h, g.a_write_1h,
         g.n_write_1h - CASE WHEN g.price_cache_write_1h = g.price_cache_write THEN g.n_write_both ELSE 0 END),
        ('output', g.price_output, g.q_output, g.a_output, g.n_output),
        ('reasoning', g.price_reasoning, g.q_reasoning, g.a_reasoning, g.n_reasoning)
       ) AS c (category, unit_price, quantity, amount, n)
 WHERE abs(c.quantity) > 0  -- any sign: a reprice moves quantities out (negative) and in
 GROUP BY g.org_id, g.billing_month, g.usage_month, g.model, c.category, c.unit_price, g.currency
 ORDER BY g.org_id, g.billing_month, g.usage_month, g.model, c.category, c.unit_price, g.currency
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
       {n},
       coalesce({n} FILTER (WHERE e.rate_id IS NULL), 0),
       sum({w}e.input_tokens),
       sum({w}e.cached_input_tokens),
       sum({w}e.cache_write_tokens),
       sum({w}e.output_tokens),
       sum({w}e.reasoning_tokens),
       coalesce(sum({w}e.input_tokens) FILTER (WHERE e.rate_id IS NULL), 0),
       coalesce(sum({w}e.output_tokens) FILTER (WHERE e.rate_id IS NULL), 0),
       coalesce(sum({w}e.cost_total), 0)
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

-- name: add_usage_org_month
-- Every event (priced or not), per org and usage month (UTC, as usage_daily's days): what quota checks
-- read. Rows in key order, like the others.
INSERT INTO usage_org_month AS t (
    org_id, month, events, unpriced_events, input_tokens, output_tokens, unpriced_input_tokens,
    unpriced_output_tokens, cost)
SELECT e.org_id, date_trunc('month', e.occurred_at AT TIME ZONE 'UTC')::date,
       {n},
       coalesce({n} FILTER (WHERE e.rate_id IS NULL), 0),
       sum({w}e.input_tokens),
       sum({w}e.output_tokens),
       coalesce(sum({w}e.input_tokens) FILTER (WHERE e.rate_id IS NULL), 0),
       coalesce(sum({w}e.output_tokens) FILTER (WHERE e.rate_id IS NULL), 0),
       coalesce(sum({w}e.cost_total), 0)
  FROM {table} AS e
 GROUP BY 1, 2
 ORDER BY 1, 2
    ON CONFLICT (org_id, month) DO UPDATE
   SET events                 = t.events + EXCLUDED.events,
       unpriced_events        = t.unpriced_events + EXCLUDED.unpriced_events,
       input_tokens           = t.input_tokens + EXCLUDED.input_tokens,
       output_tokens          = t.output_tokens + EXCLUDED.output_tokens,
       unpriced_input_tokens  = t.unpriced_input_tokens + EXCLUDED.unpriced_input_tokens,
       unpriced_output_tokens = t.unpriced_output_tokens + EXCLUDED.unpriced_output_tokens,
       cost                   = t.cost + EXCLUDED.cost
