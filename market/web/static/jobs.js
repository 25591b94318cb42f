// Jobs: the public list and a job's page (progress, checks, slashes, settlement with proofs, training loss).
// The requester's prompts and outputs are fetched only with their token (or an auditor's), from the
// signed-in endpoints; the public data never contains them.

import { authHeaders, badge, el, getJSON, glb, short, table, token, txLink, when } from "./api.js";
import { linePlot } from "./plot.js";

export async function renderList(view) {
  const data = await getJSON("/v1/dashboard/jobs?limit=100");
  const rows = data.items.map((j) => el("tr", { testid: "job-row", "data-job": j.id },
    el("td", {}, el("a", { href: `#/jobs/${j.id}` }, j.id.slice(0, 8))),
    el("td", {}, j.kind), el("td", {}, j.model), el("td", {}, badge(j.status)),
    el("td", {}, j.verification || "-"),
    el("td", {}, j.settlement ? `${j.settlement.kind} ${j.settlement.status}` : "-"),
    el("td", {}, short(j.requester)), el("td.num", {}, glb(j.budget, 3)), el("td", {}, when(j.created_at))));
  view.replaceChildren(el("h1", {}, "Jobs"), el("p.muted", {}, `${data.total} job(s)`),
    table(["job", "kind", "model", "status", "verification", "settlement", "requester", "budget", "created"],
      rows, { testid: "jobs" }));
}

function progressBar(done, total, label) {
  const pct = total ? Math.min(100, Math.round((100 * done) / total)) : 0;
  const fill = el("div.fill");
  fill.style.width = `${pct}%`; // CSSOM, not a style attribute: the page's CSP allows no inline styles
  return el("div.progress", { testid: "progress", role: "progressbar", "aria-valuenow": pct },
    fill, el("span", {}, label || `${pct}%`));
}

function checks(v) {
  const c = v.checks;
  const cells = ["sampled", "passed", "failed", "disputed", "pending"].map((k) =>
    el("div.stat", { testid: `checks-${k}` }, el("b", {}, String(c[k] ?? 0)), el("span", {}, k)));
  const per = Object.entries(c.by_worker).map(([w, n]) => el("tr", {},
    el("td", {}, el("a", { href: `#/workers/${w}` }, short(w))), el("td.num", {}, n.sampled),
    el("td.num", {}, n.passed), el("td.num", {}, n.failed), el("td.num", {}, n.disputed)));
  return el("section.card", {}, el("h2", {}, "Verification ", badge(v.status)),
    el("div.stats", {}, cells), v.detail ? el("p.muted", {}, v.detail) : null,
    per.length ? table(["worker", "sampled", "passed", "failed", "disputed"], per) : null,
    v.beacon ? el("p.muted.mono", {}, `sampling beacon ${v.beacon}`) : null);
}

async function slashes(list) {
  if (!list.length) return null;
  const rows = await Promise.all(list.map(async (s) => el("tr", { testid: "slash-row" },
    el("td", {}, el("a", { href: `#/workers/${s.worker}` }, short(s.worker))), el("td.num", {}, glb(s.amount)),
    el("td", {}, badge(s.status)), el("td", {}, await txLink(s.tx)))));
  return el("section.card", {}, el("h2", {}, "Slashes"), table(["worker", "amount", "status", "transaction"], rows));
}

async function settlement(s) {
  if (!s) return el("section.card", {}, el("h2", {}, "Settlement"), el("p.muted", {}, "Not settled yet."));
  const records = s.records.map((r) => el("tr", { testid: "payment-row" },
    el("td.mono", {}, r.task.slice(0, 8)), el("td", {}, el("a", { href: `#/workers/${r.payee}` }, short(r.payee))),
    el("td.num", {}, r.units), el("td.num", {}, glb(r.amount)), el("td", {}, r.status),
    el("td", {}, el("a", { href: r.proof_url, testid: "proof-link", target: "_blank", rel: "noopener" },
      "Merkle proof"))));
  return el("section.card", { testid: "settlement" },
    el("h2", {}, "Settlement ", badge(s.status)),
    el("p", {}, "transaction ", await txLink(s.tx), " · report root ",
      el("span.mono", { title: s.report_root || "" }, s.report_root ? short(s.report_root) : "-"),
      s.report_url ? [" · ", el("a", { href: s.report_url, target: "_blank", rel: "noopener" }, "report")] : null),
    el("div.stats", {}, el("div.stat", {}, el("b", {}, glb(s.paid)), el("span", {}, "paid to workers")),
      el("div.stat", {}, el("b", {}, glb(s.fee)), el("span", {}, "fee")),
      el("div.stat", {}, el("b", {}, glb(s.refunded)), el("span", {}, "refunded"))),
    table(["task", "payee", "units", "amount", "status", "proof"], records, { testid: "payments" }));
}

function training(t) {
  if (!t || !t.rounds) return null;
  const points = t.loss.map((p) => ({ x: p.version, y: p.eval_loss, label: `checkpoint v${p.version}: ${p.eval_loss}` }));
  const rounds = t.per_round.map((r) => el("tr", {}, el("td.num", {}, r.round), el("td", {}, badge(r.status)),
    el("td.num", {}, r.eval_loss?.toFixed(4) ?? "-"), el("td.num", {}, r.worker_loss?.toFixed(4) ?? "-"),
    el("td.num", {}, r.updates), el("td", {}, r.close_state || "-")));
  const cps = t.checkpoints.map((c) => el("tr", { testid: "checkpoint-row" }, el("td.num", {}, `v${c.version}`),
    el("td", {}, c.round === null ? "initial" : `after round ${c.round}`),
    el("td.num", {}, c.eval_loss?.toFixed(4) ?? "-"), el("td.mono", {}, c.sha256 ? c.sha256.slice(0, 16) : "-")));
  return el("section.card", {}, el("h2", {}, "Training ", badge(t.status)),
    progressBar(t.round, t.rounds, `round ${Math.min(t.round, t.rounds)} of ${t.rounds}`),
    el("h3", {}, "Held-out loss per checkpoint"),
    linePlot(points, { xLabel: "checkpoint version (round)", yLabel: "eval loss", testid: "loss-plot" }),
    table(["round", "status", "eval loss", "worker loss", "updates", "closed"], rounds),
    el("h3", {}, "Checkpoints"), table(["version", "from", "eval loss", "manifest sha256"], cps));
}

// The owner's view: prompts and text (and, while it runs, the live stream).
async function privateSection(job, box) {
  if (job.kind !== "inference") return;
  if (!token()) {
    box.replaceChildren(el("p.muted", { testid: "private-hint" },
      "Prompts and outputs are private: enter the requester's (or an auditor's) token above to see them."));
    return;
  }
  let result;
  try {
    result = await getJSON(`/v1/jobs/${job.id}/result`, { auth: true });
  } catch (e) {
    box.replaceChildren(el("p.bad", { testid: "private-hint" }, `Your token cannot read this job (${e.message}).`));
    return;
  }
  const rows = result.outputs.map((o, i) => el("tr", { testid: "output-row" }, el("td.num", {}, i),
    el("td", {}, o.prompt), el("td.text", { testid: "output-text", "data-index": i }, o.text ?? "")));
  box.replaceChildren(el("h2", {}, "Prompts and outputs (private)"), table(["#", "prompt", "text"], rows));
  if (["funded", "running"].includes(result.status)) streamInto(job.id, box);
}

let streaming = null;
async function streamInto(jobId, box) {
  if (streaming === jobId) return;
  streaming = jobId;
  try {
    const r = await fetch(`/v1/jobs/${jobId}/stream?format=ndjson`, { headers: authHeaders() });
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const ev = JSON.parse(line);
        if (ev.event === "token" && ev.text) {
          ev.text.forEach((delta, b) => {
            const cell = box.querySelector(`[data-testid=output-text][data-index="${ev.first_prompt + b}"]`);
            if (cell) cell.textContent += delta;
          });
        }
      }
    }
  } finally {
    streaming = null;
  }
}

export async function renderJob(view, id) {
  const job = await getJSON(`/v1/dashboard/jobs/${id}`);
  const head = el("section.card", {}, el("h1", {}, `Job ${job.id.slice(0, 8)} `, badge(job.status)),
    el("dl.facts", {},
      el("dt", {}, "kind"), el("dd", {}, job.kind), el("dt", {}, "model"), el("dd", {}, job.model),
      el("dt", {}, "requester"), el("dd", {}, short(job.requester)),
      el("dt", {}, "price / unit"), el("dd", {}, glb(job.price_per_unit, 6)),
      el("dt", {}, "escrowed"), el("dd", {}, glb(job.funded_amount)),
      el("dt", {}, "funding"), el("dd", {}, await txLink(job.funding_tx)),
      el("dt", {}, "deadline"), el("dd", {}, when(job.deadline)),
      el("dt", {}, "chain job id"), el("dd.mono", { title: job.chain_job_id }, short(job.chain_job_id))));
  const parts = [head];
  if (job.progress) {
    const p = job.progress;
    parts.push(el("section.card", {}, el("h2", {}, "Progress"),
      progressBar(p.tokens_generated, p.tokens_total,
        `${p.tokens_generated} of ${p.tokens_total} tokens · batch ${p.batches_done}/${p.batches}`),
      p.live.map((r) => el("p.muted", { testid: "live-route" }, `run ${r.run_id.slice(0, 8)} step ${r.step}: `,
        r.route.map((h) => `[${h.layers[0]}, ${h.layers[1]}) ${short(h.worker)}`).join(" → ")))));
  }
  const priv = el("section.card", { testid: "private" });
  parts.push(priv);
  parts.push(training(job.training));
  parts.push(checks(job.verification));
  parts.push(await slashes(job.slashes));
  parts.push(await settlement(job.settlement));
  view.replaceChildren(...parts.filter(Boolean));
  await privateSection(job, priv);
}

export async function renderTx(view, hash) {
  const data = await getJSON(`/v1/dashboard/tx/${hash}`);
  const rows = data.events.map((e) => el("tr", {}, el("td.num", {}, e.block), el("td", {}, e.event),
    el("td.mono", {}, short(e.contract)), el("td.mono", {}, JSON.stringify(e.args))));
  view.replaceChildren(el("h1", {}, "Transaction"), el("p.mono", {}, hash),
    data.indexed ? table(["block", "event", "contract", "arguments"], rows, { testid: "tx-events" })
      : el("p.muted", {}, "The market has not indexed events of this transaction (yet)."));
}
