-- 0007 provider aliases: the provider name an event carries (what the app or the SDK calls it) and the
-- name its prices are published under in the rate table. Pricing matches either (sql/queries/pricing.sql);
-- add rows for other gateways or spellings. Without this, a "gemini" event would find no "google" rate
-- and stay unpriced.
CREATE TABLE provider_aliases (
    provider       text PRIMARY KEY CHECK (length(provider) BETWEEN 1 AND 256),
    price_provider text NOT NULL CHECK (length(price_provider) BETWEEN 1 AND 256),
    CHECK (provider <> price_provider)
);

INSERT INTO provider_aliases (provider, price_provider) VALUES
    ('gemini', 'google'),
    ('google-gemini', 'google'),
    ('google-genai', 'google'),
    ('vertex', 'google'),
    ('vertex_ai', 'google'),
    ('vertexai', 'google'),
    ('google-vertex', 'google'),
    ('dashscope', 'qwen'),
    ('qwen-dashscope', 'qwen'),
    ('alibaba', 'qwen'),
    ('kimi', 'moonshot'),
    ('moonshotai', 'moonshot'),
    ('mistralai', 'mistral'),
    ('x-ai', 'xai'),
    ('grok', 'xai'),
    ('deepseek-ai', 'deepseek'),
    ('claude', 'anthropic');

GRANT SELECT ON provider_aliases TO usagebill_worker, usagebill_reader;
