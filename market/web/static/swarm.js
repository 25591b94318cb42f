// Swarm: per model, the layers x workers coverage map, and the routes of the generations running now.

import { el, getJSON, glb, short, table } from "./api.js";

function coverageMap(model) {
  const layers = [...Array(model.num_layers).keys()];
  const head = el("tr", {}, el("th", {}, "worker"), el("th", {}, "operator"),
    layers.map((i) => el("th.layer", {}, String(i))),
    el("th", {}, "tokens/s"), el("th", {}, "latency"), el("th", {}, "reputation"), el("th", {}, "stake"),
    el("th", {}, "calls"));
  const rows = model.workers.map((w) =>
    el("tr", { testid: "worker-row", "data-address": w.address },
      el("td", {}, el("a", { href: `#/workers/${w.address}`, title: w.address }, short(w.address))),
      el("td", {}, w.operator),
      layers.map((i) => {
        const on = i >= w.layers[0] && i < w.layers[1];
        return el(on ? "td.cell.on" : "td.cell", on ? { testid: "coverage-cell", title: `layer ${i}` } : {});
      }),
      el("td.num", {}, w.throughput_tokens_s), el("td.num", {}, `${w.latency_ms} ms`),
      el("td.num", {}, w.reputation.toFixed(3)), el("td.num", {}, w.stake ? glb(w.stake, 2) : "-"),
      el("td.num", {}, w.calls)));
  const replicas = el("tr.replicas", {}, el("th", { colspan: 2 }, "replicas per layer"),
    model.coverage.map((n) => el(n === 0 ? "td.gap" : "td.num", { testid: "replicas" }, String(n))),
    el("td", { colspan: 5 }));
  return el("table.coverage", { testid: "coverage-map", "data-model": model.name },
    el("thead", {}, head), el("tbody", {}, rows, replicas));
}

function routes(list) {
  if (!list.length) return el("p.muted", { testid: "routes" }, "No generation running right now.");
  return table(["run", "model", "route", "step", "sequences", "failovers"], list.map((r) =>
    el("tr", { testid: "route-row" },
      el("td", {}, r.run_id.slice(0, 8)), el("td", {}, r.model),
      el("td", {}, r.route.map((h) => `[${h.layers[0]}, ${h.layers[1]}) ${short(h.worker)}`).join(" → ")),
      el("td.num", {}, `${r.step}/${r.max_new_tokens}`), el("td.num", {}, r.sequences),
      el("td.num", {}, r.failovers))), { testid: "routes" });
}

export async function render(view) {
  const data = await getJSON("/v1/dashboard/swarm");
  const parts = [el("h1", {}, "Swarm")];
  if (!data.models.length) parts.push(el("p.muted", {}, "This market serves no model yet."));
  for (const m of data.models) {
    const gaps = m.coverage.filter((n) => n === 0).length;
    parts.push(el("section.card", {},
      el("h2", {}, m.name, " ", el("small", {}, `${m.family} · ${m.num_layers} layers · hidden ${m.hidden_size}`)),
      el("p", { testid: "coverage-summary" }, `${m.workers.length} connected worker(s); `,
        gaps ? el("strong.bad", {}, `${gaps} layer(s) without a worker`) : "every layer served"),
      coverageMap(m)));
  }
  parts.push(el("section.card", {}, el("h2", {}, "Live routes"), routes(data.routes)));
  view.replaceChildren(...parts);
}
