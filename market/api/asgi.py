"""ASGI entry for uvicorn (`factory=True`): each server process reads its Settings here, at its entry point."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from globai.logs import configure
from market.api.app import create_app
from market.config import Settings


def app_factory() -> FastAPI:
    configure(level=logging.INFO)  # GLOBAI_LOG_FORMAT, inherited from `globai market serve`
    return create_app(Settings())
