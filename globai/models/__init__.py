"""Model artifacts: manifests, per-layer safetensors shards, import/split, tiny built-in models, references.

Importable by both the market and the worker; nothing here imports FastAPI or touches the network.
"""
