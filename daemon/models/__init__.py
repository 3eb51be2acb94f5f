"""Model specs, the offline model builders and loading (worker side: imports torch lazily)."""
