"""Partners: the protocol (answers parsed and bounded), the lookups of one query, and the
per-partner delivery mechanism (circuit breaker, backoff, paced replay of the backlog)."""
