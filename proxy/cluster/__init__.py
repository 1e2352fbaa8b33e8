"""Shared state across workers and boxes through Redis (the ``[cluster]`` config table).

Its settings live in proxy/config.py (ClusterSettings). The app imports ``node`` only when
``redis_url`` is set, so a single process never loads redis-py.
"""
