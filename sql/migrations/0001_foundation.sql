-- 0001 foundation: customers, billing months, usage events with their dedup keys, rejected events,
-- conflicts and the aggregates that quotas and invoices read. All times are timestamptz (UTC sessions).

-- Any org id seen is a customer; the row carries its billing currency (USD unless set).
CREATE TABLE orgs (
    org_id     text PRIMARY KEY CHECK (length(org_id) BETWEEN 1 AND 256),
    currency   char(3) NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per calendar month (UTC) once anything concerns it. Ingestion takes FOR SHARE on the rows of
-- the months it writes; `invoice close` flips status under FOR UPDATE. So a batch that commits during
-- a close lands either on the month's invoice or as a late adjustment, never nowhere.
CREATE TABLE billing_months (
    month      date PRIMARY KEY CHECK (month = date_trunc('month', month)::date),
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closed_at  timestamptz,
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

-- Dedup by event_id across all orgs. Kept apart from the events so it outlives monthly partitions
-- (a unique key on a partitioned table must include the partition key).
CREATE TABLE event_keys (
    event_id     text PRIMARY KEY CHECK (event_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    payload_hash bytea NOT NULL,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per accepted event: what it used, and how it was priced (NULL rate_id = unpriced).
CREATE TABLE events (
    event_id              text NOT NULL,
    org_id                text NOT NULL,
    user_id               text,
    session_id            text,
    request_type          text,
    provider              text NOT NULL,
    model                 text NOT NULL,
    service_tier          text,
    status                text NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'error', 'aborted')),
    estimated             boolean NOT NULL DEFAULT false,
    latency_ms            bigint CHECK (latency_ms >= 0),
    reservation_id        text,
    tags                  jsonb NOT NULL DEFAULT '{}',
    extra                 jsonb,            -- unknown fields of the raw payload, kept as sent
    occurred_at           timestamptz NOT NULL,
    received_at           timestamptz NOT NULL DEFAULT now(),
    usage_month           date NOT NULL,    -- month of occurred_at (UTC): the original month
    billing_month         date NOT NULL,    -- month whose invoice carries it (later when its month was closed)
    input_tokens          bigint NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens   bigint NOT NULL CHECK (cached_input_tokens >= 0),
    cache_write_tokens    bigint NOT NULL CHECK (cache_write_tokens >= 0),
    cache_write_1h_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_write_1h_tokens >= 0),
    output_tokens         bigint NOT NULL CHECK (output_tokens >= 0),
    reasoning_tokens      bigint NOT NULL CHECK (reasoning_tokens >= 0),
    provider_cost         numeric CHECK (provider_cost >= 0),
    -- pricing: unit prices are per million tokens, as applied (fallbacks and org adjustment included)
    currency              char(3),
    rate_id               bigint,
    adjustment_pct        numeric,
    price_input           numeric,
    price_cached_input    numeric,
    price_cache_write     numeric,
    price_cache_write_1h  numeric,
    price_output          numeric,
    price_reasoning       numeric,
    cost_input            numeric,
    cost_cached_input     numeric,
    cost_cache_write      numeric,
    cost_cache_write_1h   numeric,
    cost_output           numeric,
    cost_reasoning        numeric,
    cost_total            numeric,
    priced_at             timestamptz,
    CONSTRAINT events_subsets CHECK (
        cached_input_tokens + cache_write_tokens <= input_tokens
        AND reasoning_tokens <= output_tokens
        AND cache_write_1h_tokens <= cache_write_tokens),
    CONSTRAINT events_priced CHECK (
        (rate_id IS NULL AND cost_total IS NULL) OR (rate_id IS NOT NULL AND cost_total IS NOT NULL
            AND currency IS NOT NULL AND priced_at IS NOT NULL)),
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- A default partition takes every month until monthly partitions are created ahead (see README).
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE INDEX events_org_month ON events (org_id, usage_month);
CREATE INDEX events_unpriced ON events (provider, model) WHERE rate_id IS NULL;

-- Events that failed validation: the reason and the raw payload, for inspection. Never counted.
CREATE TABLE rejected_events (
    id          bigserial PRIMARY KEY,
    event_id    text,            -- as sent, when it could be read
    org_id      text,
    reason      text NOT NULL,
    raw         text NOT NULL,   -- the payload as received (text: it may not even be JSON)
    job_id      text,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_events_received ON rejected_events (received_at);

-- The same event_id sent again with a different canonical payload: the first copy wins, this is kept.
CREATE TABLE event_conflicts (
    id            bigserial PRIMARY KEY,
    event_id      text NOT NULL,
    first_hash    bytea NOT NULL,
    conflict_hash bytea NOT NULL,
    payload       jsonb NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, conflict_hash)
);

-- What invoices need: per org, billing month, original (usage) month, model, category and the unit
-- price actually applied; the amount is the exact (unrounded) sum of the events' costs. Rounding
-- happens once, when a line is rendered. Re-rating reversals carry negative quantities.
CREATE TABLE invoice_usage (
    org_id        text NOT NULL,
    billing_month date NOT NULL,
    usage_month   date NOT NULL,   -- the original month; differs from billing_month for late usage
    model         text NOT NULL,
    category      text NOT NULL CHECK (category IN ('input', 'cached_input', 'cache_write', 'output', 'reasoning')),
    unit_price    numeric NOT NULL,
    currency      char(3) NOT NULL,
    quantity      numeric NOT NULL,
    amount        numeric NOT NULL,
    events        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, billing_month, usage_month, model, category, unit_price, currency)
);

-- What quota views need: per org, user ('' when none), UTC day, provider and model. Sums are numeric:
-- each count is below 2^63, their sum need not be. cost counts priced events only; unpriced usage is
-- kept in tokens so quota checks can charge it at a conservative rate.
CREATE TABLE usage_daily (
    org_id                 text NOT NULL,
    user_id                text NOT NULL DEFAULT '',
    day                    date NOT NULL,
    provider               text NOT NULL,
    model                  text NOT NULL,
    events                 bigint NOT NULL DEFAULT 0,
    unpriced_events        bigint NOT NULL DEFAULT 0,
    input_tokens           numeric NOT NULL DEFAULT 0,
    cached_input_tokens    numeric NOT NULL DEFAULT 0,
    cache_write_tokens     numeric NOT NULL DEFAULT 0,
    output_tokens          numeric NOT NULL DEFAULT 0,
    reasoning_tokens       numeric NOT NULL DEFAULT 0,
    unpriced_input_tokens  numeric NOT NULL DEFAULT 0,
    unpriced_output_tokens numeric NOT NULL DEFAULT 0,
    cost                   numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, day, user_id, provider, model)
);
