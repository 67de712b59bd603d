// lsr search page: plain JS, no dependencies, works offline against the same server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { retriever: "auto", retrievers: ["sparse"], seq: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// The snippet as text nodes with <mark> around highlighted spans (never innerHTML: documents are untrusted).
function highlighted(text, spans) {
  const frag = document.createDocumentFragment();
  let at = 0;
  for (const span of (spans || []).slice().sort((a, b) => a.start - b.start)) {
    if (span.start < at) continue;
    frag.append(text.slice(at, span.start));
    const mark = el("mark", { class: span.expansion ? "expansion" : "match", title: span.expansion
      ? `expansion term “${span.term}” (added by the model)` : `query term “${span.term}”` }, text.slice(span.start, span.end));
    frag.append(mark);
    at = span.end;
  }
  frag.append(text.slice(at));
  return frag;
}

function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); }

function renderHit(hit, rank, fused) {
  const meta = el("div", { class: "meta" },
    el("span", {}, `#${rank}`), el("span", { class: "doc-id" }, hit.id), el("span", {}, `score ${fmt(hit.score)}`));
  if (fused.length > 1) {
    for (const name of fused) meta.append(el("span", {}, `${name} ${fmt(hit[`${name}_score`])}`));
  }
  const li = el("li", { class: "hit" },
    el("h2", {}, hit.title || hit.id), meta,
    el("p", { class: "snippet" }, highlighted(hit.snippet || "", hit.highlights)));
  if (hit.explain && hit.explain.length) {
    const terms = el("div", { class: "terms", "aria-label": "top contributing terms" });
    for (const t of hit.explain) {
      terms.append(el("span", { class: "term" + (t.expansion ? " expansion" : ""),
        title: `query ${t.query_weight.toFixed(2)} × doc ${t.doc_weight.toFixed(2)}` },
        `${t.term} ${t.contribution.toFixed(2)}`));
    }
    li.append(terms);
  }
  return li;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", !!isError);
}

// A server started with a read key (--read-api-key) answers 401: ask for the key once, keep it for this tab.
async function apiFetch(url, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = sessionStorage.getItem("lsr-api-key");
    const headers = Object.assign({}, options.headers || {}, key ? { "X-API-Key": key } : {});
    const response = await fetch(url, Object.assign({}, options, { headers }));
    if (response.status !== 401 || attempt > 0) return response;
    const entered = window.prompt("This server needs an API key for searches:");
    if (!entered) return response;
    sessionStorage.setItem("lsr-api-key", entered);
  }
}

async function search() {
  const q = $("q").value.trim();
  if (!q) { $("results").replaceChildren(); setStatus(""); return; }
  const body = { q, k: Number($("k").value), mode: $("mode").value, retriever: state.retriever, explain: true };
  if ($("query_encoder").value !== "model") body.query_encoder = $("query_encoder").value;
  if (isFusion(state.retriever)) {
    if ($("fusion").value) body.fusion = $("fusion").value;
    if ($("alpha").dataset.touched && !$("alpha-label").hidden) body.alpha = Number($("alpha").value);
  }
  const params = new URLSearchParams({ q, retriever: state.retriever, mode: body.mode });
  history.replaceState(null, "", `/?${params}`);
  const seq = ++state.seq;
  const t0 = performance.now();
  setStatus("Searching…");
  let response, data;
  try {
    response = await apiFetch("/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify(body) });
    data = await response.json();
  } catch (err) {
    if (seq === state.seq) setStatus(`Request failed: ${err}`, true);
    return;
  }
  if (seq !== state.seq) return;  // a newer search is under way
  const roundTrip = performance.now() - t0;
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    setStatus(`Error ${response.status}: ${detail}`, true);
    $("results").replaceChildren();
    return;
  }
  const list = $("results");
  const fused = data.retriever.split("+");
  list.replaceChildren(...data.hits.map((hit, i) => renderHit(hit, i + 1, fused)));
  const asked = state.retriever === data.retriever ? "" : `${state.retriever}: `;
  const weights = data.fusion && data.fusion.method === "convex"
    ? Object.entries(data.fusion.weights).map(([name, w]) => `${name} ${w.toFixed(2)}`).join(", ") + `, ${data.fusion.normalization}` : "";
  const what = asked + data.retriever + (data.query_encoder && data.query_encoder !== "model" ? ` [${data.query_encoder} queries]` : "") + (data.fusion ? ` (${data.fusion.method}${weights ? ` ${weights}` : ""})` : "") + `, ${data.mode}`;
  setStatus(`${data.hits.length} results · ${what} · server ${data.took_ms.toFixed(1)} ms · round trip ${roundTrip.toFixed(1)} ms`);
  $("status").dataset.latency = String(data.took_ms);
}

function setRetriever(value) {
  state.retriever = value;
  for (const button of $("retriever").querySelectorAll("button")) {
    const on = button.dataset.value === value;
    button.classList.toggle("active", on);
    button.setAttribute("aria-checked", String(on));
  }
  document.body.classList.toggle("hybrid", isFusion(value));
}

// Whether a retriever choice fuses several retrievers on this index (auto does when the index holds more than one).
function isFusion(value) { return value === "hybrid" || (value === "auto" && state.retrievers.length > 1); }

async function init() {
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  $("retriever").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button || button.disabled) return;
    setRetriever(button.dataset.value);
    search();
  });
  for (const id of ["mode", "query_encoder", "fusion", "k"]) $(id).addEventListener("change", search);
  $("alpha").addEventListener("input", () => {
    $("alpha").dataset.touched = "1";
    $("alpha-out").textContent = Number($("alpha").value).toFixed(2);
  });
  $("alpha").addEventListener("change", search);

  const params = new URLSearchParams(location.search);
  if (params.get("q")) $("q").value = params.get("q");
  const asked = params.get("retriever");

  // Wait for the index (503 while loading), then fill in modes, the dense switch and the footer.
  for (;;) {
    try {
      const response = await apiFetch("/stats");
      if (response.ok) {
        const stats = await response.json();
        $("mode").replaceChildren(...stats.modes.map((m) => el("option", { value: m }, m)));
        if (params.get("mode") && stats.modes.includes(params.get("mode"))) $("mode").value = params.get("mode");
        const encoders = stats.query_encoders || ["model"];
        $("query_encoder").replaceChildren(...encoders.map((e) => el("option", { value: e }, e)));
        $("query-encoder-label").hidden = encoders.length < 2;
        state.retrievers = stats.retrievers || ["sparse"];
        for (const button of $("retriever").querySelectorAll("button")) {
          const value = button.dataset.value;
          const missing = value === "hybrid" ? state.retrievers.length < 2
            : !["auto", ...state.retrievers].includes(value);
          if (missing) {
            button.disabled = true;
            button.title = value === "hybrid" ? "this index has a single retriever" : `this index has no ${value} field`;
          }
        }
        // alpha weighs sparse against dense: offered when the index holds exactly those two
        $("alpha-label").hidden = state.retrievers.join("+") !== "sparse+dense";
        const button = asked && $("retriever").querySelector(`button[data-value="${CSS.escape(asked)}"]`);
        setRetriever(button && !button.disabled ? asked : "auto");
        $("footer").textContent = `${stats.documents.toLocaleString()} documents · sparse model ${stats.model.name}` +
          (stats.dense_model ? ` · dense model ${stats.dense_model.name} (${stats.dense_search})` : "") +
          " · highlights: yellow = query term, blue = expansion term added by the model";
        break;
      }
      if (response.status === 401) { setStatus("This server needs an API key: reload the page to enter it.", true); return; }
      setStatus("Index is loading…");
    } catch (err) {
      setStatus("Server unreachable, retrying…", true);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  setStatus("");
  if ($("q").value) search();
}

init();
