"""Data, not code: SQL migrations, JSON Schemas of data templates, the OpenAPI document."""
