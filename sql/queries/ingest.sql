-- Ingestion: one batch = one transaction. The batch is COPYed into a per-session staging table, its
-- new events are inserted once (dedup by event_keys) and priced set-based in the same statement, routed
-- to billing months and added to the aggregates. Statements touch rows in key order, so concurrent workers never deadlock.

-- name: claim_jobs
-- The jobs whose batches this transaction commits: each id not claimed yet (in job id order, one lock
-- order for every worker). An id another open transaction holds waits for it; an id already committed
-- is not returned: that job's batch is in, and its stored result is what it returns.
INSERT INTO ingest_jobs (job_id)
SELECT job_id FROM unnest(%(job_ids)s::text[]) AS j (job_id) ORDER BY job_id
    ON CONFLICT (job_id) DO NOTHING
RETURNING job_id

-- name: job_results
-- The stored results of committed jobs.
SELECT job_id, result FROM ingest_jobs WHERE job_id = ANY(%(job_ids)s::text[])

-- name: store_results
-- What each job of the transaction did (its own counts), kept with its claim.
UPDATE ingest_jobs AS j SET result = r.result::jsonb
  FROM unnest(%(job_ids)s::text[], %(results)s::text[]) AS r (job_id, result)
 WHERE j.job_id = r.job_id

-- name: prune_jobs
-- Claims older than 90 days. A job that runs again later (a failed job re-queued by an operator) inserts
-- nothing, its event ids being taken, but parks its rejections again.
DELETE FROM ingest_jobs WHERE committed_at < now() - interval '90 days'

-- name: create_stage
-- Per-session scratch tables, emptied at every commit. ingest_stage holds the validated events, typed
-- (the worker writes each field of the validated event, so Postgres parses no jsonb document per event
-- nor extracts its fields), their hash, and the keys pricing resolves rates for; ingest_new the events
-- actually inserted, priced, shaped like events so that the aggregates take it as it is, plus the
-- position of the staged copy that claimed each one's key (each job's own counts: part_counts). The canonical
-- JSON is not staged: only a conflict stores it, and the worker has it (insert_conflicts); staged, it
-- was half of each row's bytes (COPY, and every scan of the staging table).
-- Made once per session by this process, after dropping any left by another one (a session a pooler
-- hands over keeps its temp tables, perhaps of an older shape; pg_temp: never a permanent table).
DROP TABLE IF EXISTS pg_temp.ingest_stage, pg_temp.ingest_new;
CREATE TEMP TABLE ingest_stage (
    pos                   integer NOT NULL,
    event_id              text NOT NULL,
    occurred_at           timestamptz NOT NULL,
    payload_hash          bytea NOT NULL,
    extra                 jsonb,
    org_id                text NOT NULL,
    user_id               text,
    session_id            text,
    request_type          text,
    provider              text NOT NULL,
    model                 text NOT NULL,
    service_tier          text,
    status                text NOT NULL,
    estimated             boolean NOT NULL,
    latency_ms            bigint,
    reservation_id        text,
    tags                  jsonb NOT NULL,
    input_tokens          bigint NOT NULL,
    cached_input_tokens   bigint NOT NULL,
    cache_write_tokens    bigint NOT NULL,
    cache_write_1h_tokens bigint NOT NULL,
    output_tokens         bigint NOT NULL,
    reasoning_tokens      bigint NOT NULL,
    provider_cost         numeric
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE ingest_new (LIKE events INCLUDING DEFAULTS, pos integer NOT NULL) ON COMMIT DELETE ROWS;

-- name: copy_stage
COPY ingest_stage (pos, event_id, occurred_at, payload_hash, extra, org_id, user_id, session_id, request_type,
                   provider, model, service_tier, status, estimated, latency_ms, reservation_id, tags,
                   input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
                   reasoning_tokens, provider_cost) FROM STDIN

-- name: route_months
-- Every usage month of the batch (the worker's, from the rows it staged: no pass over the stage), routed
-- to its billing month (and its row locked FOR SHARE).
SELECT usage_month, billing_month FROM route_billing_months(%(months)s::date[])

-- name: claim_new
-- More CTEs for pricing's `insert_priced` (billing.pricing.priced_insert; the rates are resolved for
-- the keys of ingest_stage): the first copy of each event_id in the batch (by position) claims its
-- key; the ones whose key was free become the `fresh` rows, which are priced into ingest_new with
-- their position (carried). Keys are inserted in event_id order (deterministic lock order).
, firsts AS MATERIALIZED (
    SELECT DISTINCT ON (event_id)
           pos, event_id, occurred_at, payload_hash, extra, org_id, user_id, session_id, request_type, provider, model,
           service_tier, status, estimated, latency_ms, reservation_id, tags, input_tokens, cached_input_tokens,
           cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, provider_cost
      FROM ingest_stage
     ORDER BY event_id, pos
), claimed AS (
    INSERT INTO event_keys (event_id, payload_hash, occurred_at)
    SELECT event_id, payload_hash, occurred_at
      FROM firsts
     ORDER BY event_id
        ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), routes AS (
    SELECT * FROM unnest(%(usage_months)s::date[], %(billing_months)s::date[]) AS r (usage_month, billing_month)
), fresh AS MATERIALIZED (
    SELECT f.event_id, f.org_id, f.user_id, f.session_id, f.request_type, f.provider, f.model, f.service_tier,
           f.status, f.estimated, f.latency_ms, f.reservation_id, f.tags, f.extra, f.occurred_at,
           now() AS received_at, r.usage_month, r.billing_month,
           f.input_tokens, f.cached_input_tokens, f.cache_write_tokens, f.cache_write_1h_tokens, f.output_tokens,
           f.reasoning_tokens, f.provider_cost, f.pos
      FROM firsts f
      JOIN claimed c ON c.event_id = f.event_id
      -- a left join: an event whose month the worker did not route would have no usage or billing month,
      -- and the insert into ingest_new fails on its NOT NULL columns instead of leaving the event out
      LEFT JOIN routes r ON r.usage_month = date_trunc('month', f.occurred_at AT TIME ZONE 'UTC')::date
)

-- name: insert_events
-- The columns insert_priced fills (ingest_new also holds each event's staged position).
INSERT INTO events (
    event_id, org_id, user_id, session_id, request_type, provider, model, service_tier, status, estimated,
    latency_ms, reservation_id, tags, extra, occurred_at, received_at, usage_month, billing_month,
    input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
    reasoning_tokens, provider_cost,
    currency, rate_id, adjustment_pct, price_input, price_cached_input, price_cache_write, price_cache_write_1h,
    price_output, price_reasoning, cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h,
    cost_output, cost_reasoning, cost_total, priced_at)
SELECT event_id, org_id, user_id, session_id, request_type, provider, model, service_tier, status, estimated,
       latency_ms, reservation_id, tags, extra, occurred_at, received_at, usage_month, billing_month,
       input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
       reasoning_tokens, provider_cost,
       currency, rate_id, adjustment_pct, price_input, price_cached_input, price_cache_write, price_cache_write_1h,
       price_output, price_reasoning, cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h,
       cost_output, cost_reasoning, cost_total, priced_at
  FROM ingest_new

-- name: upsert_orgs
-- Any org id seen is a customer (USD unless set otherwise); in org_id order. The batch's org ids are
-- new_summary's (read before: no other pass over ingest_new).
INSERT INTO orgs (org_id)
SELECT o FROM unnest(%(org_ids)s::text[]) AS o ORDER BY o
    ON CONFLICT (org_id) DO NOTHING

-- name: conflicting
-- Every staged copy whose canonical hash differs from the first accepted copy's (in this batch or an
-- earlier one): a conflict, kept for operators (insert_conflicts, with the payload the worker has), never
-- counted. Returns each one's position (the worker counts them per part of the transaction).
-- Only the copies that did not claim their key are looked up: the copy that did (most of a batch) is the
-- first copy itself, and ingest_new keeps its position. The LATERAL ... LIMIT 1 keeps this an index
-- lookup per looked-up copy: a plain join may be planned as a hash join that reads the whole of
-- event_keys (the staging table has no statistics).
WITH looked_up AS MATERIALIZED (
    SELECT s.pos, s.event_id, s.payload_hash
      FROM ingest_stage s
     WHERE NOT EXISTS (SELECT 1 FROM ingest_new n WHERE n.pos = s.pos)
)
SELECT s.pos, s.event_id, k.payload_hash AS first_hash, s.payload_hash AS conflict_hash
  FROM looked_up s
 CROSS JOIN LATERAL (SELECT e.payload_hash FROM event_keys e WHERE e.event_id = s.event_id LIMIT 1) AS k
 WHERE k.payload_hash <> s.payload_hash

-- name: insert_conflicts
-- The conflicting copies (conflicting) with their canonical JSON, each (event_id, hash) kept once, in
-- key order (one lock order for every worker).
INSERT INTO event_conflicts (event_id, first_hash, conflict_hash, payload)
SELECT DISTINCT ON (event_id, conflict_hash) event_id, first_hash, conflict_hash, payload::jsonb
  FROM unnest(%(event_ids)s::text[], %(first_hashes)s::bytea[], %(conflict_hashes)s::bytea[], %(payloads)s::text[])
       AS c (event_id, first_hash, conflict_hash, payload)
 ORDER BY event_id, conflict_hash
    ON CONFLICT (event_id, conflict_hash) DO NOTHING

-- name: part_counts
-- Per part of a transaction that carries waiting jobs (1: the job's batch, then each job it carries;
-- %(bounds)s: the first position of each part): the events it inserted, counted where the first copy of
-- each inserted event_id was staged (the copy that claimed the key, whose position ingest_new keeps),
-- and how many of them are unpriced.
SELECT width_bucket(pos, %(bounds)s::int[]) AS part, count(*), count(*) FILTER (WHERE rate_id IS NULL)
  FROM ingest_new
 GROUP BY 1

-- name: new_summary
-- Per (org, usage month) of the inserted events: what quota hooks need, the unpriced count, and the
-- quota reservations the events settle (handed to the post-commit mirror refresh; without DISTINCT, which
-- would sort the rows: the worker takes each once). One pass over ingest_new gives upsert_orgs its org
-- ids too.
SELECT org_id, usage_month, count(*) FILTER (WHERE rate_id IS NULL) AS unpriced,
       array_agg(reservation_id) FILTER (WHERE reservation_id IS NOT NULL) AS reservations
  FROM ingest_new
 GROUP BY org_id, usage_month
 ORDER BY org_id, usage_month

-- name: insert_rejected
-- Each rejection under the job it came with (a transaction may carry several jobs' batches).
INSERT INTO rejected_events (event_id, org_id, reason, raw, job_id)
SELECT event_id, org_id, reason, raw, job_id
  FROM unnest(%(event_ids)s::text[], %(org_ids)s::text[], %(reasons)s::text[], %(raws)s::text[], %(job_ids)s::text[])
       AS r (event_id, org_id, reason, raw, job_id)
