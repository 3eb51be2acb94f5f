"""The persistent priority queue: job records (jobs.py), SQLite storage with group commit
(store.py), ordering, aging and batching (scheduler.py), admission control (admission.py) and
the operations clients call (manager.py)."""
