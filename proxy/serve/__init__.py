"""The core: the reloadable router state, dispatch with fallback, the SSE relay, deadlines,
deployment health, escalation and the in-flight registry that draining reads."""
