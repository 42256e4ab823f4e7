"""SQL of usagebill: numbered migrations and named query blocks (plain .sql files)."""
