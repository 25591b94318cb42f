// The dashboard's router: #/swarm, #/jobs, #/jobs/ID, #/workers, #/workers/ADDR, #/chat, #/tx/HASH.
// Views that show live state are redrawn every few seconds while they are on screen.

import { el, setToken, token } from "./api.js";
import * as chat from "./chat.js";
import * as jobs from "./jobs.js";
import * as swarm from "./swarm.js";
import * as workers from "./workers.js";

const FINAL = new Set(["settled", "refunded", "cancelled"]);
let timer = null;
let generation = 0;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const [page = "swarm", id] = parts;
  switch (page) {
    case "jobs": return id ? { nav: "jobs", draw: (v) => jobs.renderJob(v, id), every: 2000, stopWhen: jobDone }
      : { nav: "jobs", draw: jobs.renderList, every: 3000 };
    case "workers": return id ? { nav: "workers", draw: (v) => workers.renderWorker(v, id), every: 5000 }
      : { nav: "workers", draw: workers.renderList, every: 5000 };
    case "chat": return { nav: "chat", draw: chat.render };
    case "tx": return { nav: "", draw: (v) => jobs.renderTx(v, id) };
    default: return { nav: "swarm", draw: swarm.render, every: 2000 };
  }
}

function jobDone(view) {
  const s = view.querySelector("h1 [data-testid=status]");
  return s && FINAL.has(s.textContent);
}

async function show() {
  const mine = ++generation;
  clearTimeout(timer);
  const view = document.getElementById("view");
  const r = route();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === r.nav);
  const tick = async () => {
    try {
      await r.draw(view);
      view.dataset.ready = "true";
    } catch (e) {
      view.replaceChildren(el("p.bad", { testid: "error" }, `Could not load this page: ${e.message}`));
    }
    if (mine === generation && r.every && !(r.stopWhen && r.stopWhen(view))) timer = setTimeout(tick, r.every);
  };
  view.dataset.ready = "false";
  await tick();
}

function credentials() {
  const form = document.getElementById("credentials");
  const input = document.getElementById("token");
  input.value = token();
  form.addEventListener("submit", (ev) => { ev.preventDefault(); setToken(input.value); show(); });
  document.getElementById("forget").addEventListener("click", () => { setToken(""); input.value = ""; show(); });
}

credentials();
window.addEventListener("hashchange", show);
show();
