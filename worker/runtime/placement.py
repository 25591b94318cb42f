"""Which layers a worker serves: as many as fit its memory, where the swarm is thinnest. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from globai.models.manifest import Manifest, layer_shard_name

# Room for activations and the KV cache next to the weights (fraction of the budget kept free).
KV_HEADROOM = 0.25


def layer_bytes(manifest: Manifest) -> list[int]:
    """Weight bytes of each layer (from the manifest's shard sizes)."""
    return [manifest.shard(layer_shard_name(i)).size for i in range(manifest.num_layers)]


def layers_that_fit(manifest: Manifest, memory_budget: int, start: int) -> int:
    """How many consecutive layers from `start` fit in `memory_budget` (embed/head counted where they apply)."""
    usable = memory_budget * (1 - KV_HEADROOM)
    sizes = layer_bytes(manifest)
    used = manifest.shard("embed").size if start == 0 else 0
    count = 0
    for i in range(start, manifest.num_layers):
        extra = 0
        if i == manifest.num_layers - 1:  # the head, and the embedding it is tied to if this stage lacks it
            extra = manifest.shard("head").size + (manifest.shard("embed").size if manifest.tied and start else 0)
        if used + sizes[i] + extra > usable:
            break
        used += sizes[i]
        count += 1
    return count


def choose_layer_range(manifest: Manifest, memory_budget: int, coverage: Sequence[int]) -> tuple[int, int]:
    """The window of layers this worker should serve.

    Among windows that fit the budget, pick the one covering the least-served layer (then the smallest total
    coverage, then the lowest start): a new worker fills the swarm's gap first, as Petals' block selection does.
    Raises ValueError when not even one layer fits.
    """
    n = manifest.num_layers
    if len(coverage) != n:
        raise ValueError(f"coverage has {len(coverage)} entries for {n} layers")
    best: tuple[tuple[int, int, int], tuple[int, int]] | None = None
    for start in range(n):
        length = layers_that_fit(manifest, memory_budget, start)
        if length == 0:
            continue
        end = start + length
        window = coverage[start:end]
        key = (min(window), sum(window) - length * min(window), start)
        # Prefer windows reaching the end of what fits, so the swarm's ranges tile rather than overlap.
        if best is None or key < best[0]:
            best = (key, (start, end))
    if best is None:
        raise ValueError(f"not even one layer of {manifest.name} fits in {memory_budget} bytes")
    return best[1]


def parse_layers(text: str, num_layers: int) -> tuple[int, int]:
    """`a:b` (half-open) from the command line."""
    try:
        a, b = (int(p) for p in text.split(":"))
    except ValueError:
        raise ValueError(f"--layers must look like 0:8, got {text!r}") from None
    if not 0 <= a < b <= num_layers:
        raise ValueError(f"--layers {text} is not inside 0:{num_layers}")
    return a, b
