-- Reconcile: the raw events, the aggregates and the finalized invoice lines must agree exactly, per
-- org and month. Each block returns one row per disagreement: (org_id, month, what, expected, found),
-- expected being what the events (or, for invoice lines, the aggregates) say. %(month)s NULL = all.

-- name: events_vs_usage_daily
-- usage_daily holds every event (priced or not) per UTC day; compare per org and month.
WITH ev AS (
    SELECT org_id, usage_month AS month,
           count(*)::numeric                                AS events,
           count(*) FILTER (WHERE rate_id IS NULL)::numeric AS unpriced_events,
           sum(input_tokens)                                AS input_tokens,
           sum(cached_input_tokens)                         AS cached_input_tokens,
           sum(cache_write_tokens)                          AS cache_write_tokens,
           sum(output_tokens)                               AS output_tokens,
           sum(reasoning_tokens)                            AS reasoning_tokens,
           coalesce(sum(cost_total), 0)                     AS cost
      FROM events
     WHERE %(month)s::date IS NULL OR usage_month = %(month)s::date
     GROUP BY 1, 2
), ag AS (
    SELECT org_id, date_trunc('month', day)::date AS month,
           sum(events)::numeric AS events, sum(unpriced_events)::numeric AS unpriced_events,
           sum(input_tokens) AS input_tokens, sum(cached_input_tokens) AS cached_input_tokens,
           sum(cache_write_tokens) AS cache_write_tokens, sum(output_tokens) AS output_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(cost) AS cost
      FROM usage_daily
     WHERE %(month)s::date IS NULL OR date_trunc('month', day)::date = %(month)s::date
     GROUP BY 1, 2
)
SELECT coalesce(ev.org_id, ag.org_id), coalesce(ev.month, ag.month), 'usage_daily.' || k.what, k.expected, k.found
  FROM ev FULL JOIN ag ON ag.org_id = ev.org_id AND ag.month = ev.month
 CROSS JOIN LATERAL (VALUES
        ('events', coalesce(ev.events, 0), coalesce(ag.events, 0)),
        ('unpriced_events', coalesce(ev.unpriced_events, 0), coalesce(ag.unpriced_events, 0)),
        ('input_tokens', coalesce(ev.input_tokens, 0), coalesce(ag.input_tokens, 0)),
        ('cached_input_tokens', coalesce(ev.cached_input_tokens, 0), coalesce(ag.cached_input_tokens, 0)),
        ('cache_write_tokens', coalesce(ev.cache_write_tokens, 0), coalesce(ag.cache_write_tokens, 0)),
        ('output_tokens', coalesce(ev.output_tokens, 0), coalesce(ag.output_tokens, 0)),
        ('reasoning_tokens', coalesce(ev.reasoning_tokens, 0), coalesce(ag.reasoning_tokens, 0)),
        ('cost', coalesce(ev.cost, 0), coalesce(ag.cost, 0))
       ) AS k (what, expected, found)
 WHERE k.expected IS DISTINCT FROM k.found
 ORDER BY 1, 2, 3

-- name: events_vs_usage_org_month
-- usage_org_month holds every event (priced or not) per org and UTC month: what quota checks read.
WITH ev AS (
    SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month,
           count(*)::numeric                                              AS events,
           count(*) FILTER (WHERE rate_id IS NULL)::numeric               AS unpriced_events,
           sum(input_tokens)                                              AS input_tokens,
           sum(output_tokens)                                             AS output_tokens,
           coalesce(sum(input_tokens) FILTER (WHERE rate_id IS NULL), 0)  AS unpriced_input_tokens,
           coalesce(sum(output_tokens) FILTER (WHERE rate_id IS NULL), 0) AS unpriced_output_tokens,
           coalesce(sum(cost_total), 0)                                   AS cost
      FROM events
     WHERE %(month)s::date IS NULL OR usage_month = %(month)s::date
     GROUP BY 1, 2
), ag AS (
    SELECT org_id, month, events::numeric AS events, unpriced_events::numeric AS unpriced_events, input_tokens,
           output_tokens, unpriced_input_tokens, unpriced_output_tokens, cost
      FROM usage_org_month
     WHERE %(month)s::date IS NULL OR month = %(month)s::date
)
SELECT coalesce(ev.org_id, ag.org_id), coalesce(ev.month, ag.month), 'usage_org_month.' || k.what, k.expected,
       k.found
  FROM ev FULL JOIN ag ON ag.org_id = ev.org_id AND ag.month = ev.month
 CROSS JOIN LATERAL (VALUES
        ('events', coalesce(ev.events, 0), coalesce(ag.events, 0)),
        ('unpriced_events', coalesce(ev.unpriced_events, 0), coalesce(ag.unpriced_events, 0)),
        ('input_tokens', coalesce(ev.input_tokens, 0), coalesce(ag.input_tokens, 0)),
        ('output_tokens', coalesce(ev.output_tokens, 0), coalesce(ag.output_tokens, 0)),
        ('unpriced_input_tokens', coalesce(ev.unpriced_input_tokens, 0), coalesce(ag.unpriced_input_tokens, 0)),
        ('unpriced_output_tokens', coalesce(ev.unpriced_output_tokens, 0), coalesce(ag.unpriced_output_tokens, 0)),
        ('cost', coalesce(ev.cost, 0), coalesce(ag.cost, 0))
       ) AS k (what, expected, found)
 WHERE k.expected IS DISTINCT FROM k.found
 ORDER BY 1, 2, 3

-- name: events_vs_invoice_usage
-- Per org and original (usage) month, every category's quantity and money on the invoice aggregate
-- equals the priced events' (re-rating reversals and re-bills net out to the events' current cost).
WITH ev AS (
    SELECT e.org_id, e.usage_month AS month, c.category, sum(c.quantity) AS quantity, sum(c.amount) AS amount
      FROM events AS e
     CROSS JOIN LATERAL (VALUES
            ('input', (e.input_tokens - e.cached_input_tokens - e.cache_write_tokens)::numeric, e.cost_input),
            ('cached_input', e.cached_input_tokens::numeric, e.cost_cached_input),
            ('cache_write', (e.cache_write_tokens)::numeric, e.cost_cache_write + e.cost_cache_write_1h),
            ('output', (e.output_tokens - e.reasoning_tokens)::numeric, e.cost_output),
            ('reasoning', e.reasoning_tokens::numeric, e.cost_reasoning)
           ) AS c (category, quantity, amount)
     WHERE e.rate_id IS NOT NULL AND (%(month)s::date IS NULL OR e.usage_month = %(month)s::date)
     GROUP BY 1, 2, 3
), iu AS (
    SELECT org_id, usage_month AS month, category, sum(quantity) AS quantity, sum(amount) AS amount
      FROM invoice_usage
     WHERE %(month)s::date IS NULL OR usage_month = %(month)s::date
     GROUP BY 1, 2, 3
)
SELECT coalesce(ev.org_id, iu.org_id), coalesce(ev.month, iu.month),
       'invoice_usage.' || coalesce(ev.category, iu.category) || '.' || k.what, k.expected, k.found
  FROM ev FULL JOIN iu ON iu.org_id = ev.org_id AND iu.month = ev.month AND iu.category = ev.category
 CROSS JOIN LATERAL (VALUES
        ('quantity', coalesce(ev.quantity, 0), coalesce(iu.quantity, 0)),
        ('amount', coalesce(ev.amount, 0), coalesce(iu.amount, 0))
       ) AS k (what, expected, found)
 WHERE k.expected IS DISTINCT FROM k.found
 ORDER BY 1, 2, 3

-- name: invoices_vs_invoice_usage
-- A finalized invoice's lines are the aggregate of its billing month, each rounded once: the exact
-- amounts and quantities of its lines add up to the aggregate's, and its total to its rounded lines.
WITH inv AS (
    SELECT i.org_id, i.month, i.total, sum(l.quantity) AS quantity, sum(l.exact_amount) AS exact_amount,
           sum(l.amount) AS rounded
      FROM invoices AS i
      LEFT JOIN invoice_lines AS l ON l.invoice_id = i.invoice_id
     WHERE i.status = 'finalized' AND (%(month)s::date IS NULL OR i.month = %(month)s::date)
     GROUP BY i.invoice_id, i.org_id, i.month, i.total
), iu AS (
    SELECT u.org_id, u.billing_month AS month, sum(u.quantity) AS quantity, sum(u.amount) AS amount
      FROM invoice_usage AS u
      JOIN billing_months AS b ON b.month = u.billing_month AND b.status = 'closed'
     WHERE %(month)s::date IS NULL OR u.billing_month = %(month)s::date
     GROUP BY 1, 2
)
SELECT coalesce(inv.org_id, iu.org_id), coalesce(inv.month, iu.month), 'invoice.' || k.what, k.expected, k.found
  FROM inv FULL JOIN iu ON iu.org_id = inv.org_id AND iu.month = inv.month
 CROSS JOIN LATERAL (VALUES
        ('quantity', coalesce(iu.quantity, 0), coalesce(inv.quantity, 0)),
        ('exact_amount', coalesce(iu.amount, 0), coalesce(inv.exact_amount, 0)),
        ('total', coalesce(inv.rounded, 0), coalesce(inv.total, 0))
       ) AS k (what, expected, found)
 WHERE k.expected IS DISTINCT FROM k.found
   AND NOT (inv.org_id IS NULL AND iu.quantity = 0 AND iu.amount = 0)
 ORDER BY 1, 2, 3
