"""Models the market serves: manifests, per-layer coverage by connected workers, and shard files (HTTP Range)."""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from market.api.deps import CoordinatorDep, PrincipalDep
from market.api.schemas.models import Coverage, ModelList, ModelOut
from market.coordinator.catalog import ServedModel
from market.coordinator.service import Coordinator
from market.domain_errors import NotFound

router = APIRouter(prefix="/v1/models", tags=["models"])
ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9._@+-]{1,128}$")]


def _served(coordinator: Coordinator, name: str) -> ServedModel:
    served = coordinator.catalog.get(name)
    if served is None:
        raise NotFound("model", name)
    return served


def _out(s: ServedModel) -> ModelOut:
    m = s.manifest
    return ModelOut(
        name=m.name,
        digest=s.digest,
        family=m.family,
        task=m.task,
        dtype=m.dtype,
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        vocab_size=m.vocab_size,
    )


@router.get("", response_model=ModelList)
def list_models(coordinator: CoordinatorDep, _principal: PrincipalDep) -> ModelList:
    return ModelList(models=[_out(s) for s in coordinator.catalog.all()])


@router.get("/{name}/manifest")
def manifest(coordinator: CoordinatorDep, name: ModelName, _principal: PrincipalDep) -> dict[str, Any]:
    """The manifest (pins every shard's sha256): workers check each downloaded byte against it."""
    return _served(coordinator, name).manifest.model_dump(mode="json")


@router.get("/{name}/coverage", response_model=Coverage)
def coverage(coordinator: CoordinatorDep, name: ModelName, _principal: PrincipalDep) -> Coverage:
    """How many connected workers serve each layer: a new worker picks the thinnest part of the swarm."""
    served = _served(coordinator, name)
    links = coordinator.links.live(name)
    return Coverage(
        model=name,
        layers=coordinator.links.coverage(name, served.manifest.num_layers),
        workers=[{"address": lnk.address, "layers": [lnk.layer_start, lnk.layer_end]} for lnk in links],
    )


FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
    206: {"content": {"application/octet-stream": {}}, "description": "the requested byte range"},
    416: {"description": "range not satisfiable"},
}


@router.get("/{name}/files/{path:path}", response_class=FileResponse, responses=FILE_RESPONSES)
def shard_file(coordinator: CoordinatorDep, name: ModelName, path: str, _principal: PrincipalDep) -> FileResponse:
    """A tokenizer or shard file named by the manifest; supports `Range: bytes=a-` to resume downloads."""
    served = _served(coordinator, name)
    m = served.manifest
    entry = next((e for e in [*m.tokenizer, *m.shards] if e.path == path), None)
    if entry is None:  # only files the manifest pins: never an arbitrary path under the model directory
        raise NotFound("file", path)
    full = FsPath(served.directory) / entry.path
    return FileResponse(full, media_type="application/octet-stream", headers={"X-Content-SHA256": entry.sha256})
