"""Worker-side model execution pieces: building a stage's modules from its shards, per-session KV caches.

`worker.stage.Stage` is the entry point; these modules are its parts.
"""
