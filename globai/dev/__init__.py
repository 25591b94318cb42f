"""Development-only helpers: private local services, the persistent devnet, the one-machine demo cluster.

Used by `globai devnet|demo`, the tests and the benchmarks; the product code (market services, the worker) never
imports them.
"""
