// Chat: the OpenAI-compatible endpoint (/openai/v1/chat/completions, streamed as server-sent events) with an
// API key. The conversation lives in this page only.

import { el, token } from "./api.js";

const BASE = "/openai/v1";
const state = { messages: [], busy: false };

function headers() {
  const t = token();
  return { "Content-Type": "application/json", ...(t ? { Authorization: `Bearer ${t}` } : {}) };
}

async function models(select, status) {
  try {
    const r = await fetch(`${BASE}/models`, { headers: headers() });
    if (!r.ok) throw new Error(`${r.status} ${await errorText(r)}`);
    const data = await r.json();
    select.replaceChildren(...data.data.map((m) => el("option", { value: m.id }, m.id)));
    if (!data.data.length) status.textContent = "The market serves no model.";
  } catch (e) {
    status.textContent = `Cannot list models: ${e.message}`;
  }
}

async function errorText(r) {
  try {
    const body = await r.json();
    return body.error?.message || body.detail || JSON.stringify(body);
  } catch (_e) {
    return r.statusText;
  }
}

// Reads `data: {...}` events; calls onDelta with each content delta; returns the final usage if sent.
export async function streamChat(body, onDelta) {
  const r = await fetch(`${BASE}/chat/completions`, { method: "POST", headers: headers(),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }) });
  if (!r.ok) throw new Error(`${r.status} ${await errorText(r)}`);
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let usage = null;
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return { usage, finish };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "stream error");
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta?.content) onDelta(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { usage, finish };
}

function bubble(role, text) {
  return el(`div.msg.${role}`, { testid: role === "assistant" ? "chat-answer" : "chat-question" },
    el("b", {}, role === "assistant" ? "model" : "you"), el("p", {}, text));
}

export async function render(view) {
  const select = el("select", { id: "chat-model", testid: "chat-model", "aria-label": "model" });
  const status = el("p.muted", { testid: "chat-status" }, token() ? "" : "Enter an API key above (globai keys create).");
  const log = el("div.chat-log", { testid: "chat-log" }, state.messages.map((m) => bubble(m.role, m.content)));
  const input = el("textarea", { id: "chat-input", testid: "chat-input", rows: 3, placeholder: "Ask something…" });
  const maxTokens = el("input", { type: "number", min: 1, max: 512, value: 64, id: "chat-max", "aria-label": "max tokens" });
  const send = el("button", { type: "submit", testid: "chat-send" }, "Send");
  const form = el("form.chat-form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      if (!text || state.busy) return;
      state.busy = true;
      send.disabled = true;
      input.value = "";
      state.messages.push({ role: "user", content: text });
      log.append(bubble("user", text));
      const answer = bubble("assistant", "");
      const p = answer.querySelector("p");
      answer.classList.add("streaming");
      log.append(answer);
      status.textContent = "";
      try {
        const { usage, finish } = await streamChat(
          { model: select.value, messages: state.messages, max_tokens: Number(maxTokens.value) || 64 },
          (delta) => { p.textContent += delta; log.scrollTop = log.scrollHeight; });
        state.messages.push({ role: "assistant", content: p.textContent });
        status.textContent = [finish && `finish: ${finish}`,
          usage && `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`]
          .filter(Boolean).join(" · ");
      } catch (e) {
        state.messages.pop();
        answer.remove();
        status.textContent = `Error: ${e.message}`;
      } finally {
        answer.classList.remove("streaming");
        answer.dataset.done = "true";
        state.busy = false;
        send.disabled = false;
      }
    },
  }, el("label", {}, "Model ", select), el("label", {}, "Max tokens ", maxTokens), input, send,
  el("button", { type: "button", onclick: () => { state.messages = []; log.replaceChildren(); } }, "New chat"));
  view.replaceChildren(el("h1", {}, "Chat"), el("p.muted", {},
    "Paid per token from your prepaid credit, verified like every job. Talks to ", el("code", {}, BASE), "."),
  el("section.card", {}, log, form, status));
  await models(select, status);
}
