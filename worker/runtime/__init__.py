"""The worker daemon: probe, placement, shard download, the market WebSocket link and request handling."""
