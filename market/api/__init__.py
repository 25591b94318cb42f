"""The market's REST API (FastAPI). Routers map domain errors to HTTP in `market.api.errors` only."""

from market.api.app import create_app

__all__ = ["create_app"]
