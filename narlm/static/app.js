// narlm demo page: reads /api/health, posts to /api/generate, renders a table.
// Plain DOM, no dependencies; every server string goes in through textContent.
"use strict";

(function () {
  const LABELS = {
    argmax: "argmax",
    viterbi: "CRF Viterbi",
    ratio_first: "ratio-first",
    mask_predict: "mask-predict",
    mask_predict_crf: "mask-predict + CRF",
    ar_greedy: "AR greedy",
  };
  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const button = $("generate");
  const textsBox = $("texts");
  const alphaBox = $("alpha");
  const statusLine = $("status");
  const errorBox = $("error");
  const table = $("results");
  const speedup = $("speedup");
  let health = null;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function selectedMethods() {
    return Array.from(document.querySelectorAll("#methods input:checked")).map((b) => b.value);
  }

  function updateButton() {
    button.disabled = !health || selectedMethods().length === 0 || form.dataset.busy === "1";
  }

  function renderMethods(h) {
    const box = $("methods");
    $("methods-loading").remove();
    for (const method of Object.keys(LABELS)) {
      const available = h.methods.includes(method);
      // A server runs either NAG-BERT's methods or the canvas model's: hide the other family.
      if (!available && /needs a (NAG-BERT|canvas)/.test(h.unavailable[method] || "")) continue;
      const id = "method-" + method;
      const label = el("label", { for: id, class: available ? "" : "disabled" });
      const box_ = el("input", { type: "checkbox", id: id, value: method });
      box_.checked = available;
      box_.disabled = !available;
      box_.addEventListener("change", updateButton);
      if (!available && h.unavailable[method]) label.title = h.unavailable[method];
      label.append(box_, " " + LABELS[method] + " ", el("span", { class: "tag " + h.kinds[method].toLowerCase() }, h.kinds[method]));
      box.append(label);
    }
  }

  function renderInfo(h) {
    const parts = [];
    for (const [name, m] of Object.entries(h.models)) {
      if (!m) continue;
      parts.push(`${name.toUpperCase()}: ${m.class} (${m.num_layers} layers, d=${m.hidden_size}` +
        (m.use_crf !== undefined ? `, CRF ${m.use_crf ? "on" : "off"}` : "") + `) from ${m.model_dir}`);
    }
    const l = h.limits;
    parts.push(`limits: ${l.max_texts} texts, ${l.max_tokens} tokens / ${l.max_chars} characters each`);
    $("info").textContent = parts.join(" · ");
  }

  function render(texts, data) {
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    texts.forEach((text, i) => {
      data.results.forEach((r, j) => {
        const row = el("tr", { "data-method": r.method, "data-kind": r.kind, class: r.kind.toLowerCase() });
        if (j === 0) {
          row.classList.add("first");
          row.append(el("td", { rowspan: String(data.results.length), class: "input" }, text));
        }
        const name = LABELS[r.method] + (r.method === "ratio_first" ? ` (α=${r.alpha})` : "");
        row.append(el("th", { scope: "row" }, name));
        const kind = el("td");
        kind.append(el("span", { class: "tag " + r.kind.toLowerCase() }, r.kind));
        row.append(kind);
        const output = r.outputs[i];
        row.append(el("td", { class: "output" + (output ? "" : " empty") }, output || "(empty)"));
        row.append(el("td", { class: "num latency" }, r.latency_ms.toFixed(1)));
        tbody.append(row);
      });
    });
    table.hidden = false;

    const ar = data.results.find((r) => r.method === "ar_greedy");
    const nar = data.results.filter((r) => r.kind === "NAR");
    if (ar && nar.length) {
      speedup.textContent = "Speed-up over AR greedy: " + nar.map((r) =>
        `${LABELS[r.method]} ${(ar.latency_ms / Math.max(r.latency_ms, 1e-3)).toFixed(1)}×`).join(", ");
      speedup.hidden = false;
    } else {
      speedup.hidden = true;
    }
  }

  async function generate() {
    showError("");
    const texts = textsBox.value.split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
    if (texts.length === 0) {
      showError("Type at least one input.");
      return;
    }
    const methods = selectedMethods();
    const payload = { texts: texts, methods: methods };
    if (methods.includes("ratio_first")) {
      const alpha = Number(alphaBox.value);
      if (alphaBox.value.trim() === "" || !Number.isFinite(alpha)) {
        showError("ratio-first needs a numeric α.");
        return;
      }
      payload.alpha = alpha;
    }
    form.dataset.busy = "1";
    updateButton();
    statusLine.textContent = "Generating…";
    const started = performance.now();
    try {
      const response = await fetch("/api/generate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload),
      });
      let data = null;
      try {
        data = await response.json();
      } catch (e) {
        data = null;
      }
      if (!response.ok) {
        throw new Error((data && data.error) || `HTTP ${response.status}`);
      }
      render(texts, data);
      statusLine.textContent = `${texts.length} input(s), ${methods.length} method(s); ` +
        `round trip ${(performance.now() - started).toFixed(0)} ms (server ${data.total_ms.toFixed(0)} ms).`;
    } catch (e) {
      statusLine.textContent = "";
      showError(e.message);
    } finally {
      form.dataset.busy = "0";
      updateButton();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!button.disabled) generate();
  });
  textsBox.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!button.disabled) generate();
    }
  });

  fetch("/api/health")
    .then((r) => r.json())
    .then((h) => {
      health = h;
      renderMethods(h);
      renderInfo(h);
      alphaBox.value = h.default_alpha;
      alphaBox.max = h.limits.max_alpha;
      updateButton();
    })
    .catch((e) => showError("Could not reach the server: " + e.message));
})();
