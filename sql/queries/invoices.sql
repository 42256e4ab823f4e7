-- Invoices: month status, draft lines from the aggregates, close (counter, snapshots), exports.

-- name: ensure_month
-- The month row exists (open) so the close below can lock it.
INSERT INTO billing_months (month) VALUES (%(month)s) ON CONFLICT (month) DO NOTHING

-- name: month_status
SELECT status, closed_at FROM billing_months WHERE month = %(month)s

-- name: close_month
-- Takes the row lock: waits for every in-flight ingest transaction holding FOR SHARE on this month,
-- and a second close waits here, then finds the month closed (0 rows) and finalizes nothing.
UPDATE billing_months SET status = 'closed', closed_at = now()
 WHERE month = %(month)s AND status = 'open'
RETURNING closed_at

-- name: open_months_before
-- Open months that ended before the given instant (candidates for the scheduler's close).
SELECT month FROM billing_months
 WHERE status = 'open' AND (month + interval '1 month') <= %(before)s
 ORDER BY month

-- name: month_lines
-- Every line of the month's invoices (all orgs, or one), in invoice order: org, then the contract's
-- line order (original_month nulls first; model; category input..reasoning; unit_price). Byte order
-- (COLLATE "C") so the order never depends on the server's locale. A group that nets to nothing
-- (a reversal and re-bill at one price within an open month) is no line.
SELECT u.org_id,
       u.currency,
       CASE WHEN u.usage_month = u.billing_month THEN NULL ELSE u.usage_month END AS original_month,
       u.model,
       u.category,
       u.unit_price,
       sum(u.quantity) AS quantity,
       sum(u.amount)   AS exact_amount
  FROM invoice_usage u
 WHERE u.billing_month = %(month)s
   AND (%(org_id)s::text IS NULL OR u.org_id = %(org_id)s::text)
 GROUP BY u.org_id, u.currency, u.usage_month, u.billing_month, u.model, u.category, u.unit_price
HAVING sum(u.quantity) <> 0 OR sum(u.amount) <> 0
 ORDER BY u.org_id COLLATE "C",
          original_month NULLS FIRST,
          u.model COLLATE "C",
          array_position(ARRAY['input', 'cached_input', 'cache_write', 'output', 'reasoning'], u.category),
          u.unit_price

-- name: unpriced_in_month
-- Unpriced usage the month's invoices cannot carry yet (billed as late lines once repriced).
SELECT provider, model, count(*) AS events, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
  FROM events
 WHERE rate_id IS NULL AND billing_month = %(month)s
 GROUP BY provider, model
 ORDER BY provider COLLATE "C", model COLLATE "C"

-- name: take_numbers
-- Gapless numbers: the counter row is locked until the close commits; a rollback gives them back.
UPDATE invoice_counter SET last_number = last_number + %(count)s RETURNING last_number

-- name: create_stage
CREATE TEMP TABLE invoice_stage (
    org_id text, currency char(3), number bigint, total numeric, snapshot text, snapshot_sha256 text
) ON COMMIT DROP;
CREATE TEMP TABLE invoice_line_stage (
    org_id text, line_no integer, original_month date, model text, category text,
    unit_price numeric, quantity numeric, amount numeric, exact_amount numeric
) ON COMMIT DROP

-- name: copy_invoice_stage
COPY invoice_stage (org_id, currency, number, total, snapshot, snapshot_sha256) FROM STDIN

-- name: copy_line_stage
COPY invoice_line_stage (org_id, line_no, original_month, model, category, unit_price, quantity, amount,
                         exact_amount) FROM STDIN

-- name: insert_staged_invoices
-- Inserted as drafts with their lines, then finalized below: the line trigger refuses lines added to a
-- finalized invoice, so the order matters.
INSERT INTO invoices (org_id, month, currency, status, number, total, snapshot, snapshot_sha256)
SELECT org_id, %(month)s, currency, 'draft', number, total, snapshot, snapshot_sha256 FROM invoice_stage

-- name: insert_staged_lines
INSERT INTO invoice_lines (invoice_id, line_no, original_month, model, category, unit_price, quantity, amount,
                           exact_amount)
SELECT i.invoice_id, s.line_no, s.original_month, s.model, s.category, s.unit_price, s.quantity, s.amount,
       s.exact_amount
  FROM invoice_line_stage s JOIN invoices i ON i.org_id = s.org_id AND i.month = %(month)s

-- name: finalize_month
UPDATE invoices SET status = 'finalized', finalized_at = %(closed_at)s
 WHERE month = %(month)s AND status = 'draft'

-- name: finalized_snapshots
-- The stored snapshots of a closed month, in org order (exports render from these, byte for byte).
SELECT org_id, number, snapshot, snapshot_sha256
  FROM invoices
 WHERE month = %(month)s AND status = 'finalized'
   AND (%(org_id)s::text IS NULL OR org_id = %(org_id)s::text)
 ORDER BY org_id COLLATE "C"

-- ---------------------------------------------------------------- reprice
-- Reprice works on two scratch copies of the chosen events: reprice_old (as they are) and reprice_new
-- (priced again with today's rates). The changed ones are taken out of the aggregates at the old
-- prices and put back at the new ones, on the billing month that carries them now: the event's own
-- when still open, else the earliest later open month (late lines with original_month). A finalized
-- invoice is never touched.

-- name: reprice_stage
CREATE TEMP TABLE reprice_old (LIKE events INCLUDING DEFAULTS) ON COMMIT DROP;
CREATE TEMP TABLE reprice_new (LIKE events INCLUDING DEFAULTS) ON COMMIT DROP

-- name: reprice_take_unpriced
-- Every unpriced event, locked (a concurrent reprice waits, then skips what this one priced).
INSERT INTO reprice_old
SELECT * FROM events WHERE rate_id IS NULL ORDER BY event_id FOR UPDATE

-- name: reprice_take_month
-- Every event of a usage month, priced or not, locked (the occurred_at range prunes partitions).
INSERT INTO reprice_old
SELECT * FROM events
 WHERE usage_month = %(month)s
   AND occurred_at >= %(month)s::timestamptz AND occurred_at < (%(month)s::date + interval '1 month')
 ORDER BY event_id FOR UPDATE

-- name: reprice_drop_unchanged
-- Keep only events whose pricing changed (a new rate row, other unit prices or costs). An event that
-- no rate prices any more keeps its old pricing (rates are never deleted: this is only a safeguard).
DELETE FROM reprice_new n
 USING reprice_old o
 WHERE n.event_id = o.event_id AND n.occurred_at = o.occurred_at
   AND (n.rate_id IS NULL
        OR (n.rate_id, n.currency, n.price_input, n.price_cached_input, n.price_cache_write,
            n.price_cache_write_1h, n.price_output, n.price_reasoning, n.cost_input, n.cost_cached_input,
            n.cost_cache_write, n.cost_cache_write_1h, n.cost_output, n.cost_reasoning, n.cost_total)
           IS NOT DISTINCT FROM
           (o.rate_id, o.currency, o.price_input, o.price_cached_input, o.price_cache_write,
            o.price_cache_write_1h, o.price_output, o.price_reasoning, o.cost_input, o.cost_cached_input,
            o.cost_cache_write, o.cost_cache_write_1h, o.cost_output, o.cost_reasoning, o.cost_total))

-- name: reprice_drop_old_unchanged
DELETE FROM reprice_old o
 WHERE NOT EXISTS (SELECT 1 FROM reprice_new n WHERE n.event_id = o.event_id AND n.occurred_at = o.occurred_at)

-- name: reprice_current_months
SELECT DISTINCT billing_month FROM reprice_new ORDER BY 1

-- name: reprice_route
-- The ingest area's routing (0003): each current billing month to itself when open, else the earliest
-- later open month; the month rows stay locked FOR SHARE, so a close waits for this reprice.
SELECT usage_month, billing_month FROM route_billing_months(%(months)s::date[])

-- name: reprice_set_months
-- Both copies move to the routed billing month: the reversal and the re-bill land on one invoice.
UPDATE reprice_new n SET billing_month = r.billing_month
  FROM unnest(%(current)s::date[], %(routed)s::date[]) AS r (current_month, billing_month)
 WHERE n.billing_month = r.current_month

-- name: reprice_set_old_months
UPDATE reprice_old o SET billing_month = n.billing_month
  FROM reprice_new n
 WHERE n.event_id = o.event_id AND n.occurred_at = o.occurred_at

-- name: reprice_diff
-- What the reprice posts: per (org, billing month, original month, model, category, unit price), the
-- reversal at the old price (negative) and the re-bill at the new one; exact amounts.
SELECT d.org_id, d.billing_month, d.usage_month, d.model, c.category, c.unit_price, d.currency,
       sum(d.sign * c.quantity) AS quantity, sum(d.sign * c.amount) AS amount
  FROM (SELECT -1 AS sign, * FROM reprice_old UNION ALL SELECT 1 AS sign, * FROM reprice_new) AS d
 CROSS JOIN LATERAL (VALUES
        ('input', d.price_input, d.input_tokens - d.cached_input_tokens - d.cache_write_tokens, d.cost_input),
        ('cached_input', d.price_cached_input, d.cached_input_tokens, d.cost_cached_input),
        ('cache_write', d.price_cache_write, d.cache_write_tokens - d.cache_write_1h_tokens, d.cost_cache_write),
        ('cache_write', d.price_cache_write_1h, d.cache_write_1h_tokens, d.cost_cache_write_1h),
        ('output', d.price_output, d.output_tokens - d.reasoning_tokens, d.cost_output),
        ('reasoning', d.price_reasoning, d.reasoning_tokens, d.cost_reasoning)
       ) AS c (category, unit_price, quantity, amount)
 WHERE d.rate_id IS NOT NULL AND c.quantity > 0
 GROUP BY d.org_id, d.billing_month, d.usage_month, d.model, c.category, c.unit_price, d.currency
HAVING sum(d.sign * c.quantity) <> 0 OR sum(d.sign * c.amount) <> 0
 ORDER BY d.org_id COLLATE "C", d.billing_month, d.usage_month, d.model COLLATE "C",
          array_position(ARRAY['input', 'cached_input', 'cache_write', 'output', 'reasoning'], c.category),
          c.unit_price

-- name: reprice_summary
SELECT count(*) AS events, count(*) FILTER (WHERE o.rate_id IS NULL) AS newly_priced
  FROM reprice_old o

-- name: reprice_apply
-- The events carry their new pricing and the month that bills it (so a second run finds nothing).
UPDATE events e
   SET currency = n.currency, rate_id = n.rate_id, adjustment_pct = n.adjustment_pct,
       price_input = n.price_input, price_cached_input = n.price_cached_input,
       price_cache_write = n.price_cache_write, price_cache_write_1h = n.price_cache_write_1h,
       price_output = n.price_output, price_reasoning = n.price_reasoning,
       cost_input = n.cost_input, cost_cached_input = n.cost_cached_input, cost_cache_write = n.cost_cache_write,
       cost_cache_write_1h = n.cost_cache_write_1h, cost_output = n.cost_output,
       cost_reasoning = n.cost_reasoning, cost_total = n.cost_total, priced_at = n.priced_at,
       billing_month = n.billing_month
  FROM reprice_new n
 WHERE e.event_id = n.event_id AND e.occurred_at = n.occurred_at
