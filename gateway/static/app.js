// The demo chat page: the @andes/client library against the gateway that serves this page.
import { stream } from "/client_js/index.js";

const $ = (id) => document.getElementById(id);
const log = $("log");
const prompt = $("prompt");
const pace = $("pace");
const paceValue = $("pace-value");
const transport = $("transport");
const status = $("status");

const params = new URLSearchParams(location.search);
if (params.has("tds")) pace.value = params.get("tds");
if (params.has("transport")) transport.value = params.get("transport");
paceValue.textContent = pace.value;

/** The conversation so far, OpenAI-style. */
const messages = [];
/** @type {ReturnType<typeof stream> | null} */
let current = null;

// For tests and the curious: the live state of the page.
const demo = { results: [], errors: [], streamId: null, shown: 0 };
window.andesDemo = demo;

function add(role, text = "") {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  el.append(body);
  log.append(el);
  log.scrollTop = log.scrollHeight;
  return el;
}

function stats(el, parts) {
  const s = document.createElement("div");
  s.className = "stats";
  s.innerHTML = parts.map(([k, v]) => `${k} <b>${v}</b>`).join(" · ");
  el.append(s);
}

const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

function send(text) {
  messages.push({ role: "user", content: text });
  add("user", text);
  const el = add("assistant");
  el.classList.add("streaming");
  const body = el.querySelector(".text");
  $("send").disabled = true;
  $("stop").disabled = false;
  status.textContent = "Waiting for the first token…";
  demo.shown = 0;
  current = stream({
    messages: [...messages],
    model: params.get("model") ?? undefined,
    qoe: { tds: Number(pace.value) },
    transport: transport.value,
    onStarted: (f) => {
      demo.streamId = f.stream_id;
      status.textContent = `Streaming from ${f.model} at ${pace.value} tokens/s (stream ${f.stream_id.slice(0, 8)}).`;
    },
    onText: (piece, info) => {
      body.textContent += piece;
      demo.shown = info.shown;
      log.scrollTop = log.scrollHeight;
    },
  });
  current.done.then(
    (r) => {
      messages.push({ role: "assistant", content: r.text });
      demo.results.push(r);
      stats(el, [
        ["TTFT", `${fmt(r.ttftS)} s`],
        ["QoE", fmt(r.qoe, 3)],
        ["QoE as shown", fmt(r.shownQoE, 3)],
        ["tokens", r.tokens],
        ["finish", r.finishReason ?? "–"],
      ]);
      status.textContent = "Ready.";
    },
    (e) => {
      demo.errors.push({ code: e.code, message: e.message });
      if (e.text) messages.push({ role: "assistant", content: e.text });
      el.classList.add(e.code === "cancelled" ? "cancelled" : "error");
      stats(el, [[e.code === "cancelled" ? "stopped" : "error", e.code === "cancelled" ? "by you" : `${e.code}: ${e.message}`]]);
      status.textContent = e.code === "cancelled" ? "Stopped." : `Error: ${e.message}`;
    },
  ).finally(() => {
    el.classList.remove("streaming");
    current = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  });
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = prompt.value.trim();
  if (!text || current) return;
  prompt.value = "";
  send(text);
});

prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => current?.cancel());

pace.addEventListener("input", () => {
  paceValue.textContent = pace.value;
  current?.setPace(Number(pace.value)); // live: the pacer and the gateway follow at once
});
