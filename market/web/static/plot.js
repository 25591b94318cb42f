// A small SVG line plot (loss per round, reputation over time): no library, no build.

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

function nice(v) {
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(3) : v.toPrecision(3);
}

// points: [{x: number, y: number, label?: string}]
export function linePlot(points, { width = 520, height = 220, xLabel = "", yLabel = "", testid = "plot",
                                  yMin, yMax } = {}) {
  const pad = { l: 56, r: 16, t: 12, b: 36 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
                            "aria-label": `${yLabel} by ${xLabel}`, class: "plot" });
  root.dataset.testid = testid;
  if (!points.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data yet"));
    return root;
  }
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [yMin ?? Math.min(...ys), yMax ?? Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.05 || 1; y1 += Math.abs(y1) * 0.05 || 1; }
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  root.append(svg("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, class: "axis" }));
  root.append(svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b, class: "axis" }));
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    root.append(svg("text", { x: pad.l - 6, y: Y(y) + 4, "text-anchor": "end", class: "tick" }, nice(y)));
  }
  for (const x of [...new Set(xs)].slice(0, 12)) {
    root.append(svg("text", { x: X(x), y: height - pad.b + 16, "text-anchor": "middle", class: "tick" }, String(x)));
  }
  root.append(svg("text", { x: (width + pad.l) / 2, y: height - 4, "text-anchor": "middle", class: "label" }, xLabel));
  root.append(svg("text", { x: 12, y: pad.t + 8, class: "label" }, yLabel));
  root.append(svg("polyline", { points: points.map((p) => `${X(p.x)},${Y(p.y)}`).join(" "), class: "line" }));
  for (const p of points) {
    const dot = svg("circle", { cx: X(p.x), cy: Y(p.y), r: 4, class: "point" });
    dot.append(svg("title", {}, p.label || `${xLabel} ${p.x}: ${nice(p.y)}`));
    root.append(dot);
  }
  return root;
}
