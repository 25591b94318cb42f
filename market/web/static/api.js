// Talking to the market, and small DOM helpers (text only: nothing from the network is parsed as HTML).

const TOKEN_KEY = "globai.token";

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value.trim());
  else localStorage.removeItem(TOKEN_KEY);
}

export function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

export class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

export async function getJSON(path, { auth = false } = {}) {
  const r = await fetch(path, { headers: auth ? authHeaders() : {} });
  if (!r.ok) {
    let detail = r.statusText;
    try {
      const body = await r.json();
      detail = body.detail || body.error?.message || body.error || detail;
    } catch (_e) { /* not JSON */ }
    throw new HttpError(r.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return r.json();
}

// el("tag.class", {attr: value}, child, "text", ...)
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag);
  if (classes.length) node.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "testid") node.dataset.testid = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function table(headers, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

export function short(address) {
  return address ? `${address.slice(0, 6)}…${address.slice(-4)}` : "-";
}

// GLB from a wei decimal string, without losing precision.
export function glb(wei, digits = 4) {
  if (wei === null || wei === undefined || wei === "") return "-";
  let v = BigInt(wei);
  const neg = v < 0n;
  if (neg) v = -v;
  const unit = 10n ** 18n;
  const whole = v / unit;
  const frac = (v % unit).toString().padStart(18, "0").slice(0, digits).replace(/0+$/, "");
  return `${neg ? "-" : ""}${whole}${frac ? "." + frac : ""} GLB`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "-";
}

export function badge(status) {
  return el("span.badge", { "data-status": status || "none", testid: "status" }, status || "-");
}

let info = null;
export async function marketInfo() {
  if (!info) info = await getJSON("/v1/dashboard/info");
  return info;
}

// A transaction: the configured block explorer, else the events the market indexed for it.
export async function txLink(hash, label) {
  if (!hash) return "-";
  const i = await marketInfo();
  const href = i.explorer_tx_url ? i.explorer_tx_url.replace("{tx}", hash) : `#/tx/${hash}`;
  return el("a.tx", { href, testid: "tx-link", title: hash }, label || short(hash));
}
