-- Bench data for bench_invoices.py: N priced January events across ORGS orgs, 5 models, a mid-month
-- price change (two unit prices per category), reasoning and cached tokens. Loaded straight into events;
-- the aggregates are then built by billing.aggregates.add (the ingest path's own statement).
INSERT INTO events (
    event_id, org_id, provider, model, occurred_at, usage_month, billing_month,
    input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
    currency, rate_id, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
    price_reasoning, cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h, cost_output,
    cost_reasoning, cost_total, priced_at)
SELECT 'bench-' || g, 'org-' || lpad((g %% %(orgs)s)::text, 5, '0'), 'openai', 'model-' || ((g / %(orgs)s) %% 5), t.ts,
       DATE '2026-01-01', DATE '2026-01-01',
       u.inp, u.cached, 0, u.outp, u.reas,
       'USD', p.rate_id, p.p_in, p.p_cached, p.p_in, p.p_in, p.p_out, p.p_out,
       (u.inp - u.cached) * p.p_in * 0.000001, u.cached * p.p_cached * 0.000001, 0, 0,
       (u.outp - u.reas) * p.p_out * 0.000001, u.reas * p.p_out * 0.000001,
       ((u.inp - u.cached) * p.p_in + u.cached * p.p_cached + (u.outp - u.reas) * p.p_out + u.reas * p.p_out) * 0.000001,
       now()
  FROM generate_series(1::bigint, %(events)s::bigint) AS g
 CROSS JOIN LATERAL (SELECT TIMESTAMPTZ '2026-01-01' + ((g * 2677) %% 2678400) * interval '1 second' AS ts) AS t
 CROSS JOIN LATERAL (SELECT 1000 + (g * 7919) %% 50000 AS inp, (g * 104729) %% 900 AS cached,
                            100 + (g * 7907) %% 4000 AS outp, (g * 31) %% 90 AS reas) AS u
 CROSS JOIN LATERAL (SELECT CASE WHEN t.ts < '2026-01-15' THEN 1 ELSE 2 END AS rate_id,
                            CASE WHEN t.ts < '2026-01-15' THEN 2.5 ELSE 2.25 END * (1 + (g / %(orgs)s) %% 5) AS p_in,
                            CASE WHEN t.ts < '2026-01-15' THEN 1.25 ELSE 1.125 END * (1 + (g / %(orgs)s) %% 5) AS p_cached,
                            CASE WHEN t.ts < '2026-01-15' THEN 10 ELSE 9 END * (1 + (g / %(orgs)s) %% 5) AS p_out) AS p
