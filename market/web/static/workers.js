// Workers: everyone registered (stake, reputation, checks, earnings) and one worker's page.

import { badge, el, getJSON, glb, short, table, txLink } from "./api.js";
import { linePlot } from "./plot.js";

export async function renderList(view) {
  const data = await getJSON("/v1/dashboard/workers");
  const rows = data.items.map((w) => el("tr", { testid: "worker-list-row", "data-address": w.address },
    el("td", {}, el("a", { href: `#/workers/${w.address}`, title: w.address }, short(w.address))),
    el("td", {}, w.operator), el("td", {}, badge(w.status)), el("td.num", {}, glb(w.stake, 2)),
    el("td.num", {}, w.reputation.toFixed(3)), el("td.num", {}, w.checks.passed), el("td.num", {}, w.checks.failed),
    el("td.num", {}, w.slashes), el("td.num", {}, glb(w.earned)), el("td", {}, w.connected.join(", ") || "-")));
  view.replaceChildren(el("h1", {}, "Workers"), el("p.muted", {}, `${data.total} registered`),
    table(["worker", "operator", "status", "stake", "reputation", "checks passed", "failed", "slashes", "earned",
      "connected"], rows, { testid: "workers" }));
}

export async function renderWorker(view, address) {
  const w = await getJSON(`/v1/dashboard/workers/${address}`);
  const jobs = await Promise.all(w.jobs.map(async (j) => el("tr", { testid: "earning-row" },
    el("td", {}, el("a", { href: `#/jobs/${j.job_id}` }, j.job_id.slice(0, 8))), el("td", {}, j.kind || "-"),
    el("td", {}, badge(j.job_status)), el("td.num", {}, j.units), el("td.num", {}, j.paid_units),
    el("td.num", { testid: "earned" }, glb(j.earned)),
    el("td", {}, j.settlement ? await txLink(j.settlement.tx, j.settlement.status) : "not settled"))));
  const history = w.reputation_history.map((p, i) => ({ x: i + 1, y: p.reputation,
    label: `${p.kind} (${new Date(p.at).toLocaleString()}): ${p.reputation}` }));
  const slashes = await Promise.all(w.slashes.map(async (s) => el("tr", {},
    el("td", {}, el("a", { href: `#/jobs/${s.job_id}` }, s.job_id.slice(0, 8))), el("td.num", {}, glb(s.amount)),
    el("td", {}, badge(s.status)), el("td", {}, await txLink(s.tx)))));
  view.replaceChildren(
    el("section.card", {}, el("h1", {}, `Worker ${short(w.address)} `, badge(w.status)),
      el("dl.facts", {}, el("dt", {}, "address"), el("dd.mono", {}, w.address),
        el("dt", {}, "operator"), el("dd", {}, w.operator), el("dt", {}, "stake"), el("dd", {}, glb(w.stake)),
        el("dt", {}, "reputation"), el("dd", {}, w.reputation.toFixed(3)),
        el("dt", {}, "measured"), el("dd", {}, `${w.throughput_tokens_s} tokens/s, ${w.latency_ms} ms, ${w.device}`),
        el("dt", {}, "checks"), el("dd", { testid: "worker-checks" },
          `${w.checks.passed} passed, ${w.checks.failed} failed`),
        el("dt", {}, "earned"), el("dd", { testid: "worker-earned" }, glb(w.earned)),
        el("dt", {}, "connected"), el("dd", {}, w.connected.join(", ") || "no"))),
    el("section.card", {}, el("h2", {}, "Earnings per job"),
      jobs.length ? table(["job", "kind", "status", "units", "paid units", "earned", "settlement"], jobs,
        { testid: "earnings" }) : el("p.muted", {}, "No work in any job yet.")),
    el("section.card", {}, el("h2", {}, "Reputation after each verification outcome"),
      linePlot(history, { xLabel: "outcome #", yLabel: "reputation", yMin: 0, yMax: 1, testid: "reputation-plot" })),
    slashes.length ? el("section.card", {}, el("h2", {}, "Slashes"),
      table(["job", "amount", "status", "transaction"], slashes)) : null);
}
