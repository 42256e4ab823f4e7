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
