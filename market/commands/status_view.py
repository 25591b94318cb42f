"""`globai market status` as rich tables: the dashboard's swarm view in a terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

GLB = 10**18


def _short(address: str | None) -> str:
    return f"{address[:6]}…{address[-4:]}" if address else "-"


def _glb(wei: str | None, digits: int = 2) -> str:
    return "-" if wei in (None, "") else f"{int(wei) / GLB:,.{digits}f}"


def coverage_table(model: dict[str, Any]) -> Table:
    n = int(model["num_layers"])
    gaps = sum(1 for c in model["coverage"] if c == 0)
    table = Table(
        title=f"{model['name']}  ({model['family']}, {n} layers, {len(model['workers'])} worker(s)"
        + (f", {gaps} layer(s) WITHOUT a worker)" if gaps else ", every layer served)"),
        title_justify="left",
    )
    table.add_column("worker")
    table.add_column("operator")
    table.add_column("layers " + "".join(str(i % 10) for i in range(n)), no_wrap=True)
    for name in ("tok/s", "latency", "reputation", "stake GLB", "calls"):
        table.add_column(name, justify="right")
    for w in model["workers"]:
        a, b = w["layers"]
        bar = "".join("█" if a <= i < b else "·" for i in range(n))
        table.add_row(
            w["address"],
            w["operator"],
            f"[{a:>2},{b:>2}) {bar}",
            f"{w['throughput_tokens_s']:g}",
            f"{w['latency_ms']:g} ms",
            f"{w['reputation']:.3f}",
            _glb(w.get("stake")),
            str(w["calls"]),
        )
    replicas = "".join(str(c) if c < 10 else "+" for c in model["coverage"])
    table.add_section()
    table.add_row("replicas per layer", "", f"        {replicas}", "", "", "", "", "")
    return table


def routes_table(routes: list[dict[str, Any]]) -> Table:
    table = Table(title="Live routes", title_justify="left")
    for name in ("run", "model", "route", "step", "seqs", "failovers"):
        table.add_column(name)
    for r in routes:
        hops = " → ".join(f"[{h['layers'][0]},{h['layers'][1]}) {_short(h['worker'])}" for h in r["route"])
        table.add_row(
            r["run_id"][:8],
            r["model"],
            hops,
            f"{r['step']}/{r['max_new_tokens']}",
            str(r["sequences"]),
            str(r["failovers"]),
        )
    return table


def jobs_table(jobs: dict[str, Any]) -> Table:
    table = Table(title=f"Recent jobs ({jobs['total']} in all)", title_justify="left")
    for name in ("job", "kind", "model", "status", "verification", "settlement", "requester"):
        table.add_column(name)
    for j in jobs["items"]:
        s = j.get("settlement")
        table.add_row(
            j["id"],
            j["kind"],
            j["model"],
            j["status"],
            j.get("verification") or "-",
            f"{s['kind']} {s['status']}" if s else "-",
            _short(j["requester"]),
        )
    return table


def print_status(url: str, swarm: dict[str, Any], jobs: dict[str, Any], console: Console | None = None) -> None:
    out = console or Console(width=160)
    out.print(f"market {url}  (dashboard: {url}/dashboard/)")
    if not swarm["models"]:
        out.print("this market serves no model yet")
    for model in swarm["models"]:
        out.print(coverage_table(model))
    if swarm["routes"]:
        out.print(routes_table(swarm["routes"]))
    else:
        out.print("no generation running")
    if jobs["items"]:
        out.print(jobs_table(jobs))
