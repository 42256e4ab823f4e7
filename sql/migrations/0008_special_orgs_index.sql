-- Pricing reads the orgs billed in another currency than USD at every batch (they are priced apart):
-- a partial index keeps that an index scan of those few orgs, however many orgs there are.
CREATE INDEX orgs_foreign_currency ON orgs (org_id) WHERE currency <> 'USD';
