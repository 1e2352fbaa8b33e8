"""Shared state across workers and boxes through Redis (the ``[cluster]`` config table).

Only ``settings`` is imported when no ``[cluster]`` table is configured: redis-py is loaded
by ``node`` alone, so a single process needs nothing beyond the base install.
"""
