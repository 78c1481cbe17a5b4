"""The `medhash` sub-commands, one module per area: services, send, status, learning, demo."""
