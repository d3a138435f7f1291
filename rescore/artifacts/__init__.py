"""The artifact store: schema, ids, crash-safe writer, compaction, manifest, locking. Imports no torch."""
