-- 0004 invoices: finalized invoices with their lines and canonical snapshot, a gapless invoice
-- counter, and triggers that make a finalized invoice immutable in the database itself.
-- Drafts are never stored: an open month's invoice is computed live from invoice_usage.

-- One row: the last invoice number issued. Numbers are global (one series for every org and month),
-- taken with UPDATE ... RETURNING inside the close transaction, so a rolled-back close leaves no gap
-- (a sequence would).
CREATE TABLE invoice_counter (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_number bigint NOT NULL DEFAULT 0 CHECK (last_number >= 0)
);
INSERT INTO invoice_counter DEFAULT VALUES;

-- One invoice per org per month. A close inserts it as 'draft' with its lines, then flips it to
-- 'finalized' in the same transaction; from then on the triggers below reject any change.
CREATE TABLE invoices (
    invoice_id      bigserial PRIMARY KEY,
    org_id          text NOT NULL,
    month           date NOT NULL CHECK (month = date_trunc('month', month)::date),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status          text NOT NULL CHECK (status IN ('draft', 'finalized')),
    number          bigint UNIQUE CHECK (number > 0),
    total           numeric NOT NULL,           -- sum of the rounded lines, in the currency's minor unit
    snapshot        text,                       -- the canonical JSON of the invoice, exactly as exported
    snapshot_sha256 text CHECK (snapshot_sha256 ~ '^[0-9a-f]{64}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finalized_at    timestamptz,
    UNIQUE (org_id, month),
    CONSTRAINT invoices_finalized CHECK (
        status = 'draft' OR (number IS NOT NULL AND snapshot IS NOT NULL AND snapshot_sha256 IS NOT NULL
                             AND finalized_at IS NOT NULL))
);
CREATE INDEX invoices_month ON invoices (month, org_id);

-- The lines of an invoice, in export order (line_no). amount is rounded once (half away from zero);
-- exact_amount keeps the unrounded sum it came from. original_month is set on late-usage and
-- re-rating lines (the month the usage belongs to), NULL otherwise.
CREATE TABLE invoice_lines (
    invoice_id     bigint NOT NULL REFERENCES invoices (invoice_id) ON DELETE RESTRICT,
    line_no        integer NOT NULL CHECK (line_no >= 1),
    original_month date CHECK (original_month = date_trunc('month', original_month)::date),
    model          text NOT NULL,
    category       text NOT NULL CHECK (category IN ('input', 'cached_input', 'cache_write', 'output', 'reasoning')),
    unit_price     numeric NOT NULL,
    quantity       numeric NOT NULL CHECK (quantity = trunc(quantity)),
    amount         numeric NOT NULL,
    exact_amount   numeric NOT NULL,
    PRIMARY KEY (invoice_id, line_no)
);

-- A finalized invoice never changes: no UPDATE, no DELETE (in SQL, whoever runs it).
CREATE FUNCTION invoices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'finalized' THEN
        RAISE EXCEPTION 'invoice % (org %, month %, number %) is finalized and immutable: % rejected',
            OLD.invoice_id, OLD.org_id, to_char(OLD.month, 'YYYY-MM'), OLD.number, TG_OP
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'post an adjustment on a later invoice (late usage or reprice) instead';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();

-- Lines of a finalized invoice: no UPDATE, no DELETE (row triggers) and no new line either (checked
-- once per INSERT statement over its transition table: a close inserts tens of thousands of lines).
CREATE FUNCTION invoice_lines_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    inv invoices%ROWTYPE;
BEGIN
    SELECT * INTO inv FROM invoices WHERE invoice_id = OLD.invoice_id;
    IF inv.status = 'finalized' THEN
        RAISE EXCEPTION 'invoice % (org %, month %, number %) is finalized and immutable: % of line % rejected',
            inv.invoice_id, inv.org_id, to_char(inv.month, 'YYYY-MM'), inv.number, TG_OP, OLD.line_no
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'post an adjustment on a later invoice (late usage or reprice) instead';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER invoice_lines_immutable BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoice_lines_immutable();

CREATE FUNCTION invoice_lines_no_late_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    inv invoices%ROWTYPE;
BEGIN
    SELECT i.* INTO inv FROM invoices i
     WHERE i.status = 'finalized' AND i.invoice_id IN (SELECT invoice_id FROM new_lines)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'invoice % (org %, month %, number %) is finalized and immutable: INSERT of lines rejected',
            inv.invoice_id, inv.org_id, to_char(inv.month, 'YYYY-MM'), inv.number
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'post an adjustment on a later invoice (late usage or reprice) instead';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER invoice_lines_no_late_insert AFTER INSERT ON invoice_lines
    REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION invoice_lines_no_late_insert();

-- TRUNCATE skips row triggers: refuse it outright on both tables.
CREATE FUNCTION invoices_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % rejected: finalized invoices are immutable', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_no_truncate();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_no_truncate();

-- Counter row: never deleted, never moved back (a gapless series depends on it).
CREATE FUNCTION invoice_counter_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.last_number < OLD.last_number THEN
        RAISE EXCEPTION 'the invoice counter cannot be deleted or moved back'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER invoice_counter_keep BEFORE UPDATE OR DELETE ON invoice_counter
    FOR EACH ROW EXECUTE FUNCTION invoice_counter_keep();
