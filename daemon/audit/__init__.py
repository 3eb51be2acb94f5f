"""The audit chain: a signed, append-only Merkle log of every action (RFC 6962/9162 tree,
C2SP signed checkpoints). `daemon.audit.log.AuditLog` is the live log; `daemon.audit.verify`
checks a log or an export; docs/formats.md ("Audit log") describes every byte.

Kept import-light: verification worker processes import this package.
"""
