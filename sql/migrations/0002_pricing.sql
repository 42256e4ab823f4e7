-- 0002 pricing: versioned rate rows (public and per-org custom), org discounts/markups, and the view of
-- usage that no rate prices yet. The resolution rule itself lives in sql/queries/pricing.sql.

-- One price list entry. Prices are per million tokens, exact numeric. A NULL cached/cache-write price
-- means "the input price", a NULL 1-hour write price "the cache-write price", a NULL reasoning price
-- "the output price" (the fallbacks are applied at pricing time, so the row shows what was published).
CREATE TABLE rates (
    rate_id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id               text CHECK (org_id IS NULL OR length(org_id) BETWEEN 1 AND 256),  -- NULL: public
    provider             text NOT NULL CHECK (length(provider) BETWEEN 1 AND 256),
    -- an exact model name, or a prefix pattern ending in '*' (the only '*' allowed)
    model                text NOT NULL CHECK (length(model) BETWEEN 1 AND 256 AND strpos(left(model, -1), '*') = 0),
    effective_from       timestamptz NOT NULL,
    currency             char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- NULL serves only events without a tier; the standard-tier aliases are stored as NULL
    service_tier         text CHECK (service_tier IS NULL OR (length(service_tier) BETWEEN 1 AND 256
                                     AND lower(service_tier) NOT IN ('default', 'standard', 'auto'))),
    min_input_tokens     bigint NOT NULL DEFAULT 0 CHECK (min_input_tokens >= 0),
    price_input          numeric NOT NULL CHECK (price_input >= 0),
    price_cached_input   numeric CHECK (price_cached_input >= 0),
    price_cache_write    numeric CHECK (price_cache_write >= 0),
    price_cache_write_1h numeric CHECK (price_cache_write_1h >= 0),
    price_output         numeric NOT NULL CHECK (price_output >= 0),
    price_reasoning      numeric CHECK (price_reasoning >= 0),
    source               text NOT NULL,   -- where the price came from: 'csv:FILE', 'genai-prices 0.0.x', ...
    source_date          date,            -- the date the source states its prices for
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- derived once so resolution compares plain columns: a pattern 'gpt-4o*' has prefix 'gpt-4o'
    is_pattern           boolean GENERATED ALWAYS AS (right(model, 1) = '*') STORED,
    model_prefix         text GENERATED ALWAYS AS (CASE WHEN right(model, 1) = '*' THEN left(model, -1) ELSE model END) STORED,
    CONSTRAINT rates_key UNIQUE NULLS NOT DISTINCT
        (org_id, provider, model, service_tier, min_input_tokens, currency, effective_from)
);
CREATE INDEX rates_lookup ON rates (provider, currency, model_prefix);

-- A rate row is evidence of what was billed: its key and prices never change, and a row that has
-- priced an event is never deleted. A correction is a new row (later effective_from) plus a re-rate.
CREATE FUNCTION rates_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.org_id, NEW.provider, NEW.model, NEW.effective_from, NEW.currency, NEW.service_tier,
            NEW.min_input_tokens, NEW.price_input, NEW.price_cached_input, NEW.price_cache_write,
            NEW.price_cache_write_1h, NEW.price_output, NEW.price_reasoning)
           IS DISTINCT FROM
           (OLD.org_id, OLD.provider, OLD.model, OLD.effective_from, OLD.currency, OLD.service_tier,
            OLD.min_input_tokens, OLD.price_input, OLD.price_cached_input, OLD.price_cache_write,
            OLD.price_cache_write_1h, OLD.price_output, OLD.price_reasoning) THEN
            RAISE EXCEPTION 'rate % is immutable: add a new rate row with a later effective_from', OLD.rate_id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF EXISTS (SELECT 1 FROM events WHERE rate_id = OLD.rate_id) THEN
        RAISE EXCEPTION 'rate % has priced events and cannot be deleted', OLD.rate_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER rates_guard BEFORE UPDATE OR DELETE ON rates FOR EACH ROW EXECUTE FUNCTION rates_guard();

-- An effective-dated percentage on the unit prices of public rows for one org: -10 is a 10 % discount,
-- +5 a 5 % markup. The row in force at an event's occurred_at applies; custom rows are net prices.
CREATE TABLE org_adjustments (
    org_id         text NOT NULL CHECK (length(org_id) BETWEEN 1 AND 256),
    effective_from timestamptz NOT NULL,
    percent        numeric NOT NULL CHECK (percent >= -100 AND percent <= 1000),
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, effective_from)
);

-- Usage no rate prices yet: counted in tokens, visible, never $0. `usagebill reprice` prices it once a
-- matching rate exists.
CREATE VIEW unpriced_usage AS
SELECT provider,
       model,
       count(*)                                       AS events,
       count(DISTINCT org_id)                         AS orgs,
       sum(input_tokens)                              AS input_tokens,
       sum(output_tokens)                             AS output_tokens,
       sum(input_tokens) + sum(output_tokens)         AS tokens,
       min(occurred_at)                               AS first_seen,
       max(occurred_at)                               AS last_seen
FROM events
WHERE rate_id IS NULL
GROUP BY provider, model;
