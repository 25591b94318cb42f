"""Served models: what a model is, and which connected workers cover its layers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ModelOut(BaseModel):
    name: str
    digest: str
    family: str
    task: str
    dtype: str
    num_layers: int
    hidden_size: int
    vocab_size: int


class ModelList(BaseModel):
    models: list[ModelOut]


class Coverage(BaseModel):
    model: str
    layers: list[int]  # connected workers serving each layer
    workers: list[dict[str, Any]]
