"""The fleet: daemons on several boxes sharing one job queue in PostgreSQL (docs/fleet.md).

Used only when `[fleet] database` is set; a single box keeps its SQLite queue (daemon.queue).
"""
