// wgpy management dashboard: the live peers table. Everything else works without JavaScript.
"use strict";
(function () {
  const holder = document.getElementById("peers-table");
  const status = document.getElementById("live-status");
  if (!holder || !window.EventSource) {
    if (status) status.textContent = "Live updates: unavailable (reload to refresh).";
    return;
  }
  let pending = false;
  async function refresh() {
    if (pending) return;
    pending = true;
    try {
      const answer = await fetch(holder.dataset.live + "?" + holder.dataset.query, {
        credentials: "same-origin",
        headers: { "Accept": "text/html" },
      });
      if (answer.status === 401) {
        status.textContent = "Live updates: your session ended; log in again.";
        return;
      }
      if (answer.ok) {
        const focused = document.activeElement && holder.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
        holder.innerHTML = await answer.text();  // server-rendered and escaped
        if (focused) {
          const again = holder.querySelector('[aria-label="' + CSS.escape(focused) + '"]');
          if (again) again.focus();
        }
        status.textContent = "Live updates: on (updated " + new Date().toLocaleTimeString() + ").";
      }
    } finally {
      pending = false;
    }
  }
  const events = new EventSource("/events");
  // On (re)connecting, fetch once: a change between this page's rendering and the stream's start is not missed.
  events.addEventListener("open", function () { status.textContent = "Live updates: on."; refresh(); });
  events.addEventListener("peers", refresh);
  events.addEventListener("error", function () { status.textContent = "Live updates: reconnecting…"; });
})();
