"""usagebill's billing domain: money, rates and pricing, ingestion, quotas, invoices, exports."""
