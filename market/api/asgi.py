"""ASGI entry for uvicorn (`factory=True`): each server process reads its Settings here, at its entry point."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from market.api.app import create_app
from market.config import Settings


def app_factory() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return create_app(Settings())
