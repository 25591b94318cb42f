"""`globai verifier calibrate|rate`: tolerance calibration and the sampling policy, from the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Verification: tolerance calibration and sampling rates.", no_args_is_help=True)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


@app.command()
def calibrate(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the calibration JSON here (read by load_tolerances).")
    ] = None,
    margin: Annotated[float, typer.Option(help="threshold = observed max x (1 + margin), at least the floor.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Seed of the tiny Llama's weights.")] = 1234,
    dtype: Annotated[list[str] | None, typer.Option(help="float32 and/or bfloat16 (default: both).")] = None,
    quick: Annotated[bool, typer.Option(help="Two short sequences instead of eight (a smoke run).")] = False,
    replay_device: Annotated[str, typer.Option(help="Device of the verifier's replica: cpu or cuda.")] = "cpu",
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="A real model's directory (e.g. models/smollm2-135m-instruct) instead of the "
            "tiny Llama; its report, saved as market/verifier/tolerances/<name>.json, is its default.",
        ),
    ] = None,
    stage: Annotated[
        str | None,
        typer.Option(help="Layers a:b of the stage to calibrate (default: 1:3, or a real model's first half)."),
    ] = None,
) -> None:
    """Measure honest drift and cheats on a tiny Llama (or a real model); tolerances = max honest drift + margin."""
    from market.verifier.calibrate import THRESHOLDED, CalibrationSettings, model_settings
    from market.verifier.calibrate import calibrate as run_calibration
    from market.verifier.tiny import TinyLlamaSpec

    common = {"margin": margin, "dtypes": tuple(dtype or ("float32", "bfloat16")), "replay_device": replay_device}
    if stage is not None:
        try:
            lo, hi = (int(x) for x in stage.split(":"))
        except ValueError:
            raise typer.BadParameter("--stage takes a:b, e.g. 0:15") from None
        common["stage"] = (lo, hi)
    if model is not None:
        settings = model_settings(model, **common)
    else:
        settings = CalibrationSettings(spec=TinyLlamaSpec(seed=seed), **common)  # type: ignore[arg-type]
    if quick:
        settings = dataclasses.replace(settings, seq_lens=(64, 50), prefix_len=40)
    report = run_calibration(settings)
    for name, section in report["dtypes"].items():
        honest = section["honest"]
        typer.echo(f"{name}: {honest['chunks']} honest chunks, {honest['false_positives']} false positives")
        typer.echo(f"  {'metric':15s} {'honest p99':>11s} {'honest max':>11s} {'threshold':>10s}")
        for metric, (tol_field, _) in THRESHOLDED.items():
            dist = honest["distribution"][metric]
            worst = dist["max"] if metric != "topk_overlap" else dist["min"]
            typer.echo(
                f"  {metric:15s} {_fmt(dist['p99']):>11s} {_fmt(worst):>11s} "
                f"{_fmt(section['tolerance'][tol_field]):>10s}"
            )
        sk = honest["sketch"]
        worst_sketch = ", ".join(f"{m} {_fmt(v)}" for m, v in sk["worst"].items())
        typer.echo(
            f"  committed sketch (k = {sk['k']}): {sk['chunks']} honest chunks, {sk['false_positives']} false "
            f"positives; worst {worst_sketch}"
        )
        for info_name, info in honest["informational"].items():
            typer.echo(f"  informational {info_name}: pass rate {info['pass_rate']:.0%} (not used for thresholds)")
        typer.echo("  cheats (fraction of chunks caught: full tensor / sketch only):")
        for cheat, result in section["cheats"].items():
            typer.echo(f"    {cheat:24s} {result['caught_full']:6.0%} {result['caught_sketch']:6.0%}")
    if out is not None:
        out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        typer.echo(f"wrote {out}")


@app.command()
def rate(
    chunks_per_sequence: Annotated[float, typer.Option(help="K: chunks in this worker's longest sequence.")] = 3,
    cost: Annotated[float, typer.Option(help="C: compute cost saved by cheating on a chunk (GLB).")] = 0.256,
    reward: Annotated[float, typer.Option(help="R: pay per chunk, forfeited when caught (GLB).")] = 0.32,
    slash: Annotated[float, typer.Option(help="S: slashed per detected cheat (GLB).")] = 100.0,
    collusion: Annotated[float, typer.Option(help="r: fraction of colluding replicas.")] = 0.1,
    verified: Annotated[float, typer.Option(help="Worker's verified chunks (decayed).")] = 0.0,
    failed: Annotated[float, typer.Option(help="Worker's failed checks (decayed).")] = 0.0,
) -> None:
    """Print the sampling rate the policy picks (per sequence), and what it implies."""
    from market.verifier import sampling

    econ = sampling.Economics(cost=cost, reward=reward, slash=slash, collusion=collusion)
    k = chunks_per_sequence
    p = sampling.sampling_rate(econ, sampling.WorkerHistory(verified, failed), k)
    policy = sampling.DEFAULT_POLICY
    typer.echo(f"sampling rate p = {p:.4f} per sequence")
    typer.echo(
        f"  break-even KC/((1-r)(KR+S)) = {sampling.economic_rate(econ, k):.4f}; EV of cheating = "
        f"{sampling.cheating_ev(p, econ, k):.3f} per sequence of {k:g} chunks"
    )
    detect = sampling.detection_probability(p, policy.target_cheat_fraction, policy.target_sequences, collusion)
    typer.echo(
        f"  P(catch a worker cheating in {policy.target_cheat_fraction:.0%} of its sequences before it has served "
        f"{policy.target_sequences} sequences) = {detect:.6f}"
    )
