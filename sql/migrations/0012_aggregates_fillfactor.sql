-- 0012 aggregates' fillfactor: every ingest transaction updates in place the invoice_usage lines of its
-- batch's orgs and models (~600 in the bench's mix) and the usage_org_month row of each of its orgs. With
-- room left on each page, such an update can stay on the row's page without a new index entry (a HOT
-- update): the primary keys do not bloat between vacuums, and the ingest's Postgres CPU per event fell
-- 2-3% (8000-event transactions, 4 alternating pairs, 20.2-20.9 vs 20.7-21.3 us). Pages written from now
-- on take it; existing pages as they are rewritten (VACUUM FULL or CLUSTER to apply it at once). The
-- tables may take up to twice the pages: a line per org, month, model, category and price; a row per org and month.
ALTER TABLE invoice_usage SET (fillfactor = 50);
ALTER TABLE usage_org_month SET (fillfactor = 50);
