"""Backup and restore of a state directory: a consistent snapshot with a manifest the daemon
signs (`manifest`), taken by `snapshot`, checked and put back by `restore`.

The copying runs in the `sai backup` process as the daemon's user, the signature in the daemon:
docs/operations.md ("Backup and restore") says why.
"""
