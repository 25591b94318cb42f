"""Schemathesis over HTTP against a real market process (bench/fuzz.py), signed in and anonymous, with a random
seed each run (printed, to reproduce): no 5xx and no answer the OpenAPI schema does not document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fuzz_over_http_no_5xx_no_undocumented() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--requests", "400"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(out.stdout[-2000:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " 0 5xx, 0 undocumented" in out.stdout
