"""What the market and the worker share: wire protocol, model artifacts, chain client, the market client, errors.

`globai` imports nothing from `market` or `worker` (tests/test_imports.py walks the imports to keep it so).
"""
