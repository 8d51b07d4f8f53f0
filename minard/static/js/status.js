/* Status page: the live status of every program of programs.ini.
 *
 * Rows come from the server (status.html). Every POLL_MS each row asks
 * get_status?name=: "ok" -> green, no heartbeat (expired) -> red "Not responding", any
 * other text -> yellow with that text. A failed request greys the row ("unknown") and
 * the polling goes on (the original stopped for good after one failed request).
 * Everything from Redis goes in with textContent.
 */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var table = document.getElementById("status-table");
  if (!table) { return; }
  var rows = Array.prototype.slice.call(table.querySelectorAll("tr.program"));
  var summary = document.getElementById("status-summary");
  var state = {}; // name -> "ok" | "warn" | "stale" | "unknown"

  /* "3 hours", "2 days", "a few seconds": a duration as a shifter reads it. */
  function humanize(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) { return ""; }
    var s = Math.max(0, Math.round(seconds));
    var units = [[365 * 86400, "year"], [30 * 86400, "month"], [86400, "day"],
                 [3600, "hour"], [60, "minute"]];
    if (s < 45) { return "a few seconds"; }
    for (var i = 0; i < units.length; i++) {
      var n = Math.round(s / units[i][0]);
      if (s >= units[i][0] * 0.75 || i === units.length - 1) {
        if (n <= 1) { return (units[i][1] === "hour" ? "an " : "a ") + units[i][1]; }
        return n + " " + units[i][1] + "s";
      }
    }
    return s + " seconds";
  }

  function show(row, kind, text, uptime, title) {
    row.classList.remove("ok", "warn", "stale", "unknown");
    row.classList.add(kind);
    var cell = row.querySelector("td.status");
    Minard.text(cell, text);
    cell.title = title || "";
    Minard.text(row.querySelector("td.uptime"), uptime);
    state[row.dataset.name] = kind;
  }

  function update(row) {
    var name = row.dataset.name;
    return Minard.getJSON("get_status?" + Minard.query({ name: name })).then(function (r) {
      var status = r.status;
      if (status === null || status === undefined) {
        show(row, "stale", "Not responding", "", "no heartbeat within " +
             (row.dataset.expire || "?") + " s");
      } else if (String(status).trim().toLowerCase() === "ok") {
        show(row, "ok", "OK", humanize(r.uptime), "up since " +
             (r.uptime === null ? "?" : Minard.fmtTime(Minard.nowSeconds() - r.uptime)) + " UTC");
      } else {
        show(row, "warn", String(status), humanize(r.uptime));
      }
    }, function (err) {
      show(row, "unknown", "unknown", "", "cannot ask the server: " + err.message);
    });
  }

  function summarize() {
    if (!summary) { return; }
    var counts = { ok: 0, warn: 0, stale: 0, unknown: 0 };
    rows.forEach(function (row) {
      var k = state[row.dataset.name];
      if (k) { counts[k] += 1; }
    });
    var parts = [counts.ok + " of " + rows.length + " OK"];
    if (counts.warn) { parts.push(counts.warn + " with a message"); }
    if (counts.stale) { parts.push(counts.stale + " not responding"); }
    if (counts.unknown) { parts.push(counts.unknown + " unknown (no answer from the server)"); }
    Minard.text(summary, parts.join(" · "));
    summary.className = "hint" + (counts.stale ? " bad-text" : counts.warn ? " warn-text" : "");
  }

  var busy = false;
  function poll() {
    if (busy) { return; } // the previous round is still out: do not pile up requests
    busy = true;
    Promise.all(rows.map(update)).then(function () {
      busy = false;
      summarize();
    });
  }

  poll();
  setInterval(poll, POLL_MS);
  window.MinardStatus = { humanize: humanize };
}());
