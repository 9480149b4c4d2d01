// orchd dashboard: the live parts.  No inline script anywhere (the CSP forbids it); every text
// received from the server is inserted as text (textContent), never as HTML.
(function () {
  "use strict";
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const base = meta("orchd-base") || "/";
  const csrf = meta("orchd-csrf");
  // the newest state change when the page was made: the streams start from there, so a change
  // between the page and the stream's connection is not lost
  const lastEvent = meta("orchd-last-event") || "0";
  const dot = () => document.getElementById("live-dot");

  // htmx requests carry the CSRF token of the session
  document.addEventListener("htmx:configRequest", (e) => { e.detail.headers["X-CSRF-Token"] = csrf; });

  // confirmations and JSON checks before a form is sent
  document.addEventListener("submit", (e) => {
    const form = e.target;
    const question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { e.preventDefault(); return; }
    const field = form.getAttribute("data-json-field");
    if (field) {
      const box = form.querySelector(`[name="${field}"]`);
      const error = document.getElementById(`${field}-error`);
      let problem = "";
      try {
        const value = JSON.parse(box.value.trim() || "{}");
        if (value === null || typeof value !== "object" || Array.isArray(value)) problem = 'expected a JSON object like {"days": 7}';
      } catch (err) { problem = `not JSON: ${err.message}`; }
      if (problem) {
        e.preventDefault();
        error.textContent = `parameters: ${problem}`;
        error.hidden = false;
        box.focus();
      } else if (error) { error.hidden = true; }
    }
  });

  function live(url, handlers) {
    const source = new EventSource(url);
    source.onopen = () => { const d = dot(); if (d) d.classList.add("on"); };
    source.onerror = () => { const d = dot(); if (d) d.classList.remove("on"); };
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (msg) => fn(JSON.parse(msg.data)));
    }
    return source;
  }

  function setState(row, state) {
    const badge = row.querySelector("[data-state]");
    if (!badge || badge.textContent === state) return;
    badge.textContent = state;
    badge.className = `state s-${state}`;
  }

  function debounce(fn, ms) {
    let timer = null;
    return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
  }

  function refresh(selector, url) {
    if (window.htmx) window.htmx.ajax("GET", url, { target: selector, select: selector, swap: "outerHTML" });
  }

  function logs(panel) {
    const box = document.getElementById("log-lines");
    const count = document.getElementById("log-count");
    const follow = document.getElementById("log-follow");
    const search = document.getElementById("log-search");
    const runId = panel.dataset.runId;
    let shown = box.querySelectorAll(".line").length;
    const matches = (el) => !search.value || el.textContent.toLowerCase().includes(search.value.toLowerCase());
    search.addEventListener("input", () => {
      for (const el of box.querySelectorAll(".line")) el.hidden = !matches(el);
    });
    const summary = debounce(() => refresh("#run-summary", `${base}runs/${runId}?part=summary`), 300);
    const shownState = () => (document.querySelector("#run-summary [data-state]") || {}).textContent;
    live(`${panel.dataset.stream}?after=${panel.dataset.after}&events_after=${lastEvent}`, {
      hello: (now) => { if (now.state !== shownState()) summary(); },
      line: (line) => {
        const el = document.createElement("span");
        el.className = `line ${line.stream}`;
        el.dataset.attempt = line.attempt;
        el.textContent = `${line.line}\n`;
        el.hidden = !matches(el);
        box.appendChild(el);
        shown += 1;
        count.textContent = `${shown} line${shown === 1 ? "" : "s"}`;
        if (follow.checked) box.scrollTop = box.scrollHeight;
      },
      state: () => summary(),
    });
  }

  function boot() {
    const panel = document.getElementById("logs");
    if (panel) { logs(panel); return; }
    const tables = document.querySelectorAll("[data-live-states]");
    const overview = document.getElementById("overview");
    if (!tables.length && !overview) return;
    const again = debounce(() => refresh("#overview", base), 2000);
    live(`${base}api/events/stream?after=${lastEvent}`, {
      state: (ev) => {
        const rows = document.querySelectorAll(`[data-live-states] tr[data-run-id="${ev.run_id}"]`);
        for (const row of rows) setState(row, ev.to);
        // a run that starts and is not listed: offer to show it (the list is not reordered under the reader)
        const hint = document.getElementById("new-runs");
        const listing = document.querySelector("[data-new-runs]");
        const shown = listing && [ev.deployment, ""].includes(listing.dataset.newRuns);
        if (hint && shown && !rows.length && ev.to === "PENDING") hint.hidden = false;
        if (overview) again();
      },
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
