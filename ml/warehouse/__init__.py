"""The warehouse: the Postgres server, raw ingest, data-quality gates, the dbt runner, mart reads."""
