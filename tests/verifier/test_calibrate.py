"""Calibration: thresholds sit above all honest drift and below every cheat; the report round-trips."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from market.commands.verifier import app
from market.verifier.calibrate import FLOORS, calibrate, thresholds
from market.verifier.compare import Metrics, load_tolerances

from .conftest import SETTINGS


def test_thresholds_pure() -> None:
    seen = [
        Metrics(max_rel_err=1e-3, mean_rel_err=1e-4, topk_overlap=0.97, value_max_err=1.0, value_mean_err=0.1),
        Metrics(max_rel_err=2e-3, mean_rel_err=0.0, topk_overlap=1.0, value_max_err=0.0, value_mean_err=0.0),
    ]
    tol = thresholds(seen, FLOORS["float32"], margin=1.0, overlap_margin=0.05)
    assert math.isclose(tol.max_rel_err, 4e-3) and math.isclose(tol.mean_rel_err, 2e-4)
    assert math.isclose(tol.min_topk_overlap, 0.92) and tol.value_max_err == 2.0  # the floor wins
    zero = [Metrics(max_rel_err=0, mean_rel_err=0, topk_overlap=1, value_max_err=0, value_mean_err=0)]
    assert thresholds(zero, FLOORS["float32"], 3.0, 0.05) == FLOORS["float32"]


def test_calibration_separates_every_cheat(tmp_path) -> None:
    report = calibrate(SETTINGS)
    for dtype, section in report["dtypes"].items():
        assert section["honest"]["false_positives"] == 0
        tol = section["tolerance"]
        for metric, dist in section["honest"]["distribution"].items():
            key = "min_topk_overlap" if metric == "topk_overlap" else metric
            if metric == "topk_overlap":
                assert dist["min"] >= tol[key]
            else:
                assert dist["max"] <= tol[key]
        assert section["cheats"], dtype
        for cheat, result in section["cheats"].items():
            assert result["caught_full"] == 1.0 and result["caught_sketch"] == 1.0, (dtype, cheat, result)
            assert max(result["margin_over_threshold"].values()) > 1.0
    assert "bf16_instead_of_fp32" in report["dtypes"]["float32"]["cheats"]
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(report))
    loaded = load_tolerances(path)
    assert loaded["float32"].max_rel_err == report["tolerances"]["float32"]["max_rel_err"]


def test_cli_calibrate_quick_and_rate(tmp_path) -> None:
    out = tmp_path / "calibration.json"
    result = CliRunner().invoke(app, ["calibrate", "--quick", "--dtype", "float32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 false positives" in result.output and "identity_stage" in result.output
    assert set(json.loads(out.read_text())["tolerances"]) == {"float32"}
    result = CliRunner().invoke(app, ["rate", "--chunks-per-sequence", "8"])
    assert result.exit_code == 0 and "sampling rate p =" in result.output
