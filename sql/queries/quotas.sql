-- Quotas: limits, their status, the alerts outbox and what the Redis mirror reads back from Postgres.

-- name: org_currency
-- The org's billing currency (USD when the org has no row yet).
SELECT COALESCE((SELECT currency FROM orgs WHERE org_id = %(org_id)s), 'USD');

-- name: upsert_quota
INSERT INTO quotas (org_id, user_id, kind, quota_limit, currency, mode, thresholds, webhook_url, webhook_secret)
VALUES (%(org_id)s, %(user_id)s, %(kind)s, %(quota_limit)s, %(currency)s, %(mode)s, %(thresholds)s,
        %(webhook_url)s, %(webhook_secret)s)
ON CONFLICT ON CONSTRAINT quotas_scope DO UPDATE
SET quota_limit    = EXCLUDED.quota_limit,
    currency       = EXCLUDED.currency,
    mode           = EXCLUDED.mode,
    thresholds     = EXCLUDED.thresholds,
    webhook_url    = COALESCE(EXCLUDED.webhook_url, quotas.webhook_url),
    webhook_secret = CASE WHEN EXCLUDED.webhook_url IS NULL THEN quotas.webhook_secret
                          ELSE EXCLUDED.webhook_secret END,
    updated_at     = now()
RETURNING quota_id;

-- name: delete_quota
DELETE FROM quotas WHERE org_id = %(org_id)s AND user_id IS NOT DISTINCT FROM %(user_id)s AND kind = %(kind)s
RETURNING quota_id;

-- name: quota_status
-- Every quota (of one org, or all when org_id is NULL) against the current UTC month.
SELECT quota_id, org_id, user_id, kind, mode, currency, month, quota_limit, used, remaining, percent, exceeded,
       unpriced_tokens, thresholds
FROM quota_status
WHERE %(org_id)s::text IS NULL OR org_id = %(org_id)s
ORDER BY org_id, user_id NULLS FIRST, kind;

-- name: lock_org_months
-- Serialize threshold checks per (org, month) among concurrent ingest transactions, for orgs with quotas:
-- the lock is held until commit, so the next transaction's check (a new statement, a new snapshot under
-- READ COMMITTED) sees this one's usage and a crossing made by two batches together is never missed.
-- Sorted, so two batches never wait on each other's locks. Returns the pairs locked: the totals the
-- next statement reads for them are the mirror's (see record_alerts).
SELECT s.org_id, s.month, pg_advisory_xact_lock(s.k)
FROM (
    SELECT DISTINCT hashtextextended('usagebill:quota:' || om.org_id || ':' || om.month::text, 0) AS k,
           om.org_id, om.month
    FROM unnest(%(org_ids)s::text[], %(months)s::date[]) AS om(org_id, month)
    WHERE EXISTS (SELECT 1 FROM quotas q WHERE q.org_id = om.org_id)
    ORDER BY 1
    OFFSET 0
) s;

-- name: lock_org_months_shared
-- A mirror read outside ingest (a refresh that re-reads, sync, rebuild, drift check) waits for the ingest
-- transactions of these (org, month) pairs that hold the lock above: its snapshot then includes them, and
-- no read lands between an ingest transaction's own read (record_alerts) and its commit. Sorted; shared,
-- so readers never wait for each other.
SELECT count(pg_advisory_xact_lock_shared(s.k))
FROM (
    SELECT DISTINCT hashtextextended('usagebill:quota:' || om.org_id || ':' || om.month::text, 0) AS k
    FROM unnest(%(org_ids)s::text[], %(months)s::date[]) AS om(org_id, month)
    ORDER BY 1
    OFFSET 0
) s;

-- name: record_alerts
-- Threshold crossings of the given (org, month) pairs, recorded once each (the outbox's unique key), and
-- in the same statement the absolute totals the mirror holds for them (`quota_totals`, as mirror_totals;
-- money in nano-units rounded up; `stamp` the xmax of this statement's snapshot): each scope's usage is
-- read once, shared by the alerts of its token and money quotas and by the mirror. `fired`: the alerts
-- this statement recorded (the same on every row).
WITH totals AS (
    SELECT * FROM quota_totals(%(org_ids)s::text[], %(months)s::date[])
), fired AS (
    INSERT INTO alerts (org_id, user_id, quota_id, threshold, month, kind, quota_limit, used, currency)
    SELECT q.org_id, q.user_id, q.quota_id, t.threshold, tt.month, q.kind, q.quota_limit, v.used, q.currency
    FROM totals tt
    JOIN quotas q ON q.org_id = tt.org_id AND q.user_id IS NOT DISTINCT FROM tt.user_id
    CROSS JOIN LATERAL (SELECT CASE q.kind WHEN 'tokens' THEN tt.tokens ELSE tt.money END AS used) v
    CROSS JOIN LATERAL unnest(q.thresholds) AS t(threshold)
    WHERE tt.tokens IS NOT NULL
      AND v.used * 100 >= t.threshold * q.quota_limit
    ON CONFLICT ON CONSTRAINT alerts_once DO NOTHING
    RETURNING 1
)
SELECT tt.org_id, tt.month, tt.user_id,
       COALESCE(tt.tokens, 0)::text AS tokens,
       ceil(tt.money * 1000000000)::text AS nanos,
       pg_snapshot_xmax(pg_current_snapshot())::text AS stamp,
       (SELECT count(*) FROM fired) AS fired
FROM totals tt
ORDER BY tt.org_id, tt.month;

-- name: mirror_totals
-- Absolute totals of the given (org, month) pairs for the mirror (`quota_totals`): the org scope (user_id
-- NULL) and each user that has a quota of its own; tokens and money in nano-units (rounded up:
-- conservative). `stamp` orders reads: a snapshot taken later has an xmax at least as large, so the
-- mirror keeps the newest.
SELECT t.org_id, t.month, t.user_id,
       COALESCE(t.tokens, 0)::text AS tokens,
       ceil(t.money * 1000000000)::text AS nanos,
       pg_snapshot_xmax(pg_current_snapshot())::text AS stamp
FROM quota_totals(%(org_ids)s::text[], %(months)s::date[]) AS t
ORDER BY t.org_id, t.month;

-- name: mirror_limits
-- The limits the mirror holds, for the given orgs (every org with a quota when org_ids is NULL): tokens
-- as counts, money in nano-units rounded down (conservative).
SELECT org_id, user_id, kind, mode,
       (CASE kind WHEN 'tokens' THEN quota_limit ELSE floor(quota_limit * 1000000000) END)::text AS units
FROM quotas
WHERE %(org_ids)s::text[] IS NULL OR org_id = ANY (%(org_ids)s::text[])
ORDER BY org_id;

-- name: quota_orgs
SELECT DISTINCT org_id FROM quotas ORDER BY org_id;

-- name: current_month
SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date;

-- name: set_unpriced_rate
INSERT INTO quota_unpriced_rates (currency, input_per_million, output_per_million)
VALUES (%(currency)s, %(input)s, %(output)s)
ON CONFLICT (currency) DO UPDATE
SET input_per_million = EXCLUDED.input_per_million, output_per_million = EXCLUDED.output_per_million,
    updated_at = now();

-- name: unpriced_rate
SELECT input_per_million, output_per_million FROM quota_unpriced_rate(%(currency)s, %(org_id)s);

-- name: claim_alerts
-- Undelivered alerts to hand to the delivery queue: those of the given (org, month) pairs not yet handed
-- over, or (org_ids NULL) every one never handed over or handed over more than `stale` ago (a kill between
-- this update and the enqueue, or a job that exhausted its retries), below the attempt cap.
UPDATE alerts a SET enqueued_at = now()
WHERE a.delivered_at IS NULL
  AND a.attempts < %(max_attempts)s
  AND (
        (%(org_ids)s::text[] IS NOT NULL AND a.enqueued_at IS NULL
         AND (a.org_id, a.month) IN (SELECT * FROM unnest(%(org_ids)s::text[], %(months)s::date[])))
     OR (%(org_ids)s::text[] IS NULL AND (a.enqueued_at IS NULL OR a.enqueued_at < now() - %(stale)s::interval))
  )
RETURNING a.alert_id;

-- name: alert_for_delivery
-- One undelivered alert with its quota's webhook, locked so two deliveries of it do not overlap.
SELECT a.alert_id, a.org_id, a.user_id, a.quota_id, a.threshold, a.month, a.kind, a.quota_limit, a.used,
       a.currency, a.fired_at, a.attempts, q.mode, q.webhook_url, q.webhook_secret
FROM alerts a
JOIN quotas q ON q.quota_id = a.quota_id
WHERE a.alert_id = %(alert_id)s AND a.delivered_at IS NULL
FOR UPDATE OF a SKIP LOCKED;

-- name: mark_delivered
UPDATE alerts SET delivered_at = now(), attempts = attempts + 1, last_error = NULL WHERE alert_id = %(alert_id)s;

-- name: mark_failed
UPDATE alerts SET attempts = attempts + 1, last_error = %(error)s WHERE alert_id = %(alert_id)s;

-- name: alerts_list
SELECT alert_id, org_id, user_id, quota_id, threshold, month, kind, quota_limit, used, currency, fired_at,
       delivered_at, attempts, last_error
FROM alerts
WHERE %(org_id)s::text IS NULL OR org_id = %(org_id)s
ORDER BY fired_at, alert_id;

-- name: counted_reservations
-- Which of these reservation ids have an event counted (their usage is in the aggregates).
SELECT DISTINCT reservation_id FROM events WHERE reservation_id = ANY (%(ids)s::text[]);
