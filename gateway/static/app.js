// The demo chat page: the @andes/client library against the gateway that serves this page.
//
// Query parameters: ?tds=<tokens/s> ?transport=websocket|sse ?model=<name> ?api_key=<key> (taken
// into the key field, then removed from the address bar and the history).
import { renderMarkdown, stream } from "/client_js/index.js";

const $ = (id) => document.getElementById(id);
const log = $("log");
const prompt = $("prompt");
const pace = $("pace");
const paceValue = $("pace-value");
const transport = $("transport");
const status = $("status");
const live = $("live");
const keyBox = $("key-box");
const keyField = $("api-key");

const params = new URLSearchParams(location.search);
if (params.has("tds")) pace.value = params.get("tds");
if (params.has("transport")) transport.value = params.get("transport");
paceValue.textContent = pace.value;

// The API key: from ?api_key= (kept for this tab only, and out of the address bar, where it would
// be shared with every link and bookmark), else what this tab was given before.
const KEY_STORE = "andes.apiKey";
if (params.has("api_key")) {
  sessionStorage.setItem(KEY_STORE, params.get("api_key") ?? "");
  params.delete("api_key");
  const query = params.toString();
  history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
}
keyField.value = sessionStorage.getItem(KEY_STORE) ?? "";
keyField.addEventListener("change", () => sessionStorage.setItem(KEY_STORE, keyField.value.trim()));

// Reduced motion: no blinking cursor (CSS), and text revealed in fewer, larger steps — four a
// second instead of every display frame — at the same reading pace.
const motion = matchMedia("(prefers-reduced-motion: reduce)");
const frameS = () => (motion.matches ? 0.25 : 1 / 60);

/** The conversation so far, OpenAI-style. */
const messages = [];
/** @type {ReturnType<typeof stream> | null} */
let current = null;

// For tests and the curious: the live state of the page.
const demo = { results: [], errors: [], streamId: null, shown: 0, live: null, frameS: frameS(), reducedMotion: motion.matches };
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

/** A line of `label value` pairs; values are text, never markup (an error may quote anything). */
function stats(el, parts) {
  const s = document.createElement("div");
  s.className = "stats";
  parts.forEach(([k, v], i) => {
    if (i) s.append(" · ");
    const b = document.createElement("b");
    b.textContent = String(v);
    s.append(`${k} `, b);
  });
  el.append(s);
}

const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

/** The live line while an answer streams: pace, what is shown and buffered, QoE so far. */
function showLive(ctl) {
  const st = ctl.stats();
  demo.live = st;
  live.hidden = false;
  live.textContent = `${st.paused ? "paused" : `reading at ${fmt(st.tds, 1)} tok/s`} · ${st.shown} shown · ` +
    `${st.ahead} ahead (${fmt(st.aheadS, 1)} s) · QoE so far ${st.qoe === null ? "–" : fmt(st.qoe, 3)}`;
}

function failed(el, e) {
  demo.errors.push({ code: e.code, message: e.message });
  if (e.text) messages.push({ role: "assistant", content: e.text });
  const stopped = e.code === "cancelled";
  el.classList.add(stopped ? "cancelled" : "error");
  stats(el, [[stopped ? "stopped" : "error", stopped ? "by you" : `${e.code}: ${e.message}`]]);
  if (e.code === "unauthorized") {
    keyBox.open = true;
    keyField.focus();
    status.textContent = "This gateway needs an API key: enter it above (or open the page with ?api_key=KEY).";
  } else {
    status.textContent = stopped ? "Stopped." : `Error: ${e.message}`;
  }
}

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
  demo.frameS = frameS();
  const ctl = stream({
    messages: [...messages],
    model: params.get("model") ?? undefined,
    apiKey: keyField.value.trim() || undefined,
    qoe: { tds: Number(pace.value) },
    transport: transport.value,
    frameS: demo.frameS,
    onStarted: (f) => {
      demo.streamId = f.stream_id;
      status.textContent = `Streaming from ${f.model} (stream ${f.stream_id.slice(0, 8)}).`;
    },
    onText: (_piece, info) => {
      // Markdown as it comes; an opened **bold** already looks bold (client_js/src/markdown.js).
      renderMarkdown(body, info.fullText, { partial: true });
      demo.shown = info.shown;
      showLive(ctl);
      log.scrollTop = log.scrollHeight;
    },
  });
  current = ctl;
  const ticker = setInterval(() => showLive(ctl), 250); // QoE falls during a stall, too
  ctl.done.then(
    (r) => {
      renderMarkdown(body, r.text);
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
    (e) => failed(el, e),
  ).finally(() => {
    clearInterval(ticker);
    live.hidden = true;
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
