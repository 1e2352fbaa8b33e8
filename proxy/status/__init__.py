"""Seeing the router work: an hour of history in memory, GET /status and its JSON, and
``model-router status`` in a terminal."""
