-- Statements of bench_sql_validation.py: the raw JSON texts of a batch staged as they are, then parsed,
-- extracted and checked set-based in SQL into rows shaped like ingest_stage (what the worker's Python
-- validation produces today). Each is a lower bound of what validation in SQL would cost: no guard
-- keeps a cast from failing the whole statement on a bad value, the hash is the sha256 of the text as
-- sent (not of the canonical form DESIGN.md defines conflicts by), and `checks` (appended to `extract`)
-- is a subset of wire format v1's rules (no per-tag check, no service-tier or provider-cost normalisation).

-- name: create
DROP TABLE IF EXISTS pg_temp.raw_stage, pg_temp.sql_stage;
CREATE TEMP TABLE raw_stage (pos integer NOT NULL, doc text NOT NULL) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE sql_stage (LIKE ingest_stage) ON COMMIT DELETE ROWS

-- name: copy_raw
COPY raw_stage (pos, doc) FROM STDIN

-- name: parse
-- every text parsed as jsonb, nothing kept
SELECT count(*) FROM (SELECT doc::jsonb AS j FROM raw_stage OFFSET 0) AS s WHERE j IS NOT NULL

-- name: extract
-- every field extracted and cast into a typed row, no check at all; occurred_at is cast outside the inner
-- query so that `checks` can look at its text first
INSERT INTO sql_stage (
    pos, event_id, occurred_at, payload_hash, org_id, user_id, session_id, request_type, provider, model,
    service_tier, status, estimated, latency_ms, reservation_id, tags, input_tokens, cached_input_tokens,
    cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, provider_cost)
SELECT pos, event_id, occurred_at::timestamptz, sha256(convert_to(doc, 'UTF8')), org_id, user_id, session_id,
       request_type, provider, model, service_tier, status, estimated, latency_ms, reservation_id, tags,
       input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens,
       reasoning_tokens, provider_cost
  FROM (
    SELECT pos, doc, j, j->>'event_id' AS event_id, j->>'occurred_at' AS occurred_at, j->>'org_id' AS org_id,
           j->>'user_id' AS user_id, j->>'session_id' AS session_id, j->>'request_type' AS request_type,
           j->>'provider' AS provider, j->>'model' AS model, j->>'service_tier' AS service_tier,
           coalesce(j->>'status', 'ok') AS status, coalesce((j->>'estimated')::boolean, false) AS estimated,
           (j->>'latency_ms')::bigint AS latency_ms, j->>'reservation_id' AS reservation_id,
           coalesce(j->'tags', '{}') AS tags, (j->'usage'->>'input_tokens')::bigint AS input_tokens,
           (j->'usage'->>'cached_input_tokens')::bigint AS cached_input_tokens,
           (j->'usage'->>'cache_write_tokens')::bigint AS cache_write_tokens,
           coalesce((j->'usage'->>'cache_write_1h_tokens')::bigint, 0) AS cache_write_1h_tokens,
           (j->'usage'->>'output_tokens')::bigint AS output_tokens,
           (j->'usage'->>'reasoning_tokens')::bigint AS reasoning_tokens,
           (j->'usage'->>'provider_cost')::numeric AS provider_cost
      FROM (SELECT pos, doc, doc::jsonb AS j FROM raw_stage OFFSET 0) AS p
     OFFSET 0
  ) AS s

-- name: extract_record
-- the same, each object read in one pass by jsonb_to_record instead of one lookup per field
INSERT INTO sql_stage (
    pos, event_id, occurred_at, payload_hash, org_id, user_id, session_id, request_type, provider, model,
    service_tier, status, estimated, latency_ms, reservation_id, tags, input_tokens, cached_input_tokens,
    cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, provider_cost)
SELECT r.pos, x.event_id, x.occurred_at, sha256(convert_to(r.doc, 'UTF8')), x.org_id, x.user_id, x.session_id,
       x.request_type, x.provider, x.model, x.service_tier, coalesce(x.status, 'ok'), coalesce(x.estimated, false),
       x.latency_ms, x.reservation_id, coalesce(x.tags, '{}'), u.input_tokens, u.cached_input_tokens,
       u.cache_write_tokens, coalesce(u.cache_write_1h_tokens, 0), u.output_tokens, u.reasoning_tokens,
       u.provider_cost
  FROM raw_stage AS r
 CROSS JOIN LATERAL jsonb_to_record(r.doc::jsonb) AS x (
        event_id text, occurred_at timestamptz, org_id text, user_id text, session_id text, request_type text,
        provider text, model text, service_tier text, status text, estimated boolean, latency_ms bigint,
        reservation_id text, tags jsonb, usage jsonb)
 CROSS JOIN LATERAL jsonb_to_record(x.usage) AS u (
        input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint, cache_write_1h_tokens bigint,
        output_tokens bigint, reasoning_tokens bigint, provider_cost numeric)

-- name: checks
-- appended to `extract`: only the rows that pass a subset of wire format v1's rules are kept (a real
-- validation would also park the others with a reason per failed rule)
 WHERE j->'schema_version' = '1'::jsonb
   AND event_id ~ '^[A-Za-z0-9._:-]{1,128}$'
   AND occurred_at ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$'
   AND length(org_id) BETWEEN 1 AND 256 AND length(provider) BETWEEN 1 AND 256 AND length(model) BETWEEN 1 AND 256
   AND coalesce(length(user_id), 0) <= 4096 AND coalesce(length(session_id), 0) <= 4096
   AND coalesce(length(request_type), 0) <= 4096
   AND status IN ('ok', 'error', 'aborted')
   AND jsonb_typeof(tags) = 'object'
   AND strpos(doc, '\u0000') = 0
   AND input_tokens >= 0 AND cached_input_tokens >= 0 AND cache_write_tokens >= 0 AND cache_write_1h_tokens >= 0
   AND output_tokens >= 0 AND reasoning_tokens >= 0
   AND cached_input_tokens + cache_write_tokens <= input_tokens AND reasoning_tokens <= output_tokens
   AND cache_write_1h_tokens <= cache_write_tokens
   AND coalesce(latency_ms, 0) >= 0 AND coalesce(provider_cost, 0) >= 0

-- name: differences
-- rows of sql_stage and ingest_stage (the Python path's) that differ in any typed field (the hashes and
-- extra aside; a row on one side only counts too): 0 when the SQL path produced the same rows
SELECT count(*)
  FROM sql_stage AS s
  FULL JOIN ingest_stage AS i USING (pos)
 WHERE to_jsonb(s) - 'payload_hash' - 'extra' IS DISTINCT FROM to_jsonb(i) - 'payload_hash' - 'extra'
