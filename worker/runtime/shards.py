"""Download only the shards a worker serves: resumable (HTTP Range), sha256-checked, with a progress bar.

Files land in `<cache>/<model digest>/` as `<path>.part` while downloading and are renamed once the size and
sha256 match the manifest, so a killed download resumes where it stopped and a bad byte never gets loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from globai.client import check
from globai.models.errors import ShardIntegrityError
from globai.models.manifest import FileEntry, Manifest, save_manifest, sha256_file

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def model_dir_for(cache: Path, manifest: Manifest) -> Path:
    return cache / manifest.digest()[:16]


def fetch_manifest(http: httpx.Client, model: str) -> Manifest:
    return Manifest.model_validate(check(http.get(f"/v1/models/{model}/manifest")).json())


def _complete(path: Path, entry: FileEntry) -> bool:
    return path.is_file() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def download_file(http: httpx.Client, model: str, entry: FileEntry, dest: Path, progress: Progress | None) -> int:
    """Fetch one pinned file into `dest` (resuming a `.part`); returns bytes transferred now."""
    target = dest / entry.path
    if _complete(target, entry):
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:
        part.unlink()
        have = 0
    task = progress.add_task(entry.path, total=entry.size, completed=have) if progress else None
    transferred = 0
    if have < entry.size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with http.stream("GET", f"/v1/models/{model}/files/{entry.path}", headers=headers) as response:
            if response.status_code == 200 and have:  # server ignored the range: start over
                have = 0
                part.unlink(missing_ok=True)
            elif response.status_code not in (200, 206):
                response.read()
                check(response)
            with open(part, "ab") as fh:
                for chunk in response.iter_bytes(_CHUNK):
                    fh.write(chunk)
                    transferred += len(chunk)
                    if progress is not None and task is not None:
                        progress.update(task, advance=len(chunk))
    actual = sha256_file(part)
    if actual != entry.sha256 or part.stat().st_size != entry.size:
        part.unlink(missing_ok=True)
        raise ShardIntegrityError(entry.path, entry.sha256, actual, "downloaded bytes do not match the manifest")
    part.replace(target)
    return transferred


def download_stage(
    http: httpx.Client, manifest: Manifest, start: int, end: int, cache: Path, *, show_progress: bool = True
) -> tuple[Path, int]:
    """Manifest, tokenizer and the shards of layers [start, end) into the cache; returns (model dir, bytes)."""
    dest = model_dir_for(cache, manifest)
    dest.mkdir(parents=True, exist_ok=True)
    save_manifest(manifest, dest)
    entries: Sequence[FileEntry] = [*manifest.tokenizer, *manifest.stage_shards(start, end)]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    total = 0
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        for entry in entries:
            total += download_file(http, manifest.name, entry, dest, progress)
    return dest, total
