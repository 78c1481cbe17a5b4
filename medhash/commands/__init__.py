"""The `medhash` sub-commands, one module per area (ingest, models, ...)."""
