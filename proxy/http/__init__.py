"""The face: HTTP handlers, API keys, hostile-input limits and /metrics, over the core."""
