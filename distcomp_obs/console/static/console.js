// distcomp console: refresh the page's live part every 2 s from its /fragments URL (JSON holding
// server-rendered, escaped HTML) and send the action buttons' POSTs. No build step, no library.
(function () {
  "use strict";
  var base = document.body.dataset.base || "";
  var statusEl = document.getElementById("live-status");
  var messageEl = document.getElementById("message");
  var live = document.getElementById("live");
  var busy = false;

  function status(text, bad) {
    if (!statusEl) return;
    statusEl.textContent = text;
    statusEl.className = bad ? "bad" : "muted";
  }

  function message(text, bad) {
    if (!messageEl) return;
    messageEl.textContent = text;
    messageEl.className = "message " + (bad ? "bad" : "good");
    messageEl.hidden = !text;
  }

  function refresh() {
    if (!live || !live.dataset.src || busy) return Promise.resolve();
    busy = true;
    return fetch(live.dataset.src, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) { status("refresh failed: HTTP " + r.status, true); return null; }
        return r.json();
      })
      .then(function (data) {
        if (!data) return;
        Object.keys(data.fragments || {}).forEach(function (id) {
          var el = document.getElementById(id);
          if (el) el.innerHTML = data.fragments[id];
        });
        status("live · " + new Date().toLocaleTimeString(), false);
      })
      .catch(function () { status("console unreachable", true); })
      .then(function () { busy = false; });
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest ? ev.target.closest("button[data-action]") : null;
    if (!button) return;
    ev.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    fetch(base + button.dataset.action, {
      method: "POST", credentials: "same-origin", headers: { Accept: "application/json" }
    })
      .then(function (r) { return r.json().then(function (d) { return { ok: r.ok, data: d }; }); })
      .then(function (res) {
        if (!res.ok) { message(res.data.error || "refused", true); return; }
        message(JSON.stringify(res.data), false);
        if (res.data.url) { window.location.href = res.data.url; return; }
        return refresh();
      })
      .catch(function (e) { message("request failed: " + e, true); })
      .then(function () { button.disabled = false; });
  });

  if (live && live.dataset.src) window.setInterval(refresh, 2000);
})();
