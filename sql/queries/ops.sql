-- Operations: what `usagebill status` summarizes.

-- name: counts
SELECT (SELECT count(*) FROM event_keys)                       AS events,
       (SELECT count(*) FROM events WHERE rate_id IS NULL)     AS unpriced_events,
       (SELECT count(*) FROM rejected_events)                  AS rejected_events,
       (SELECT count(*) FROM event_conflicts)                  AS conflicts

-- name: open_months
SELECT to_char(month, 'YYYY-MM') FROM billing_months WHERE status = 'open' ORDER BY month
