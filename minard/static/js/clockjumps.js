/* Clock jumps page: the per-second count as a chart (series.js: metric?expr=CLOCK_JUMPS,
 * null where no pull worker was counting) and the newest jumps as a table
 * (get_clock_jumps), read again every POLL_MS (not while paused). Text only. */
(function () {
  "use strict";

  var POLL_MS = 5000;
  new Minard.SeriesPanels({ live: function () { return undefined; } });
  var body = document.getElementById("jumps-body");
  var summary = document.getElementById("jumps-summary");
  var busy = false;

  function fmtNs(ns) {
    var a = Math.abs(ns);
    if (a >= 1e9) { return (ns / 1e9).toPrecision(4) + " s"; }
    if (a >= 1e6) { return (ns / 1e6).toPrecision(4) + " ms"; }
    if (a >= 1e3) { return (ns / 1e3).toPrecision(4) + " µs"; }
    return ns + " ns";
  }

  function row(j) {
    var tr = document.createElement("tr");
    var gtid = j.kind === "gtid" ? j.previous_gtid + " → " + j.gtid : j.gtid;
    var gap = j.kind === "gtid" ? "–" : fmtNs(100 * j.d10 - 20 * j.d50);
    [Minard.el("td", "time", Minard.fmtTime(j.time)), Minard.el("td", "num", j.run),
     Minard.el("td", "num", gtid), Minard.el("td", "bad-text", j.kind),
     Minard.el("td", "num", j.d10), Minard.el("td", "num", j.d50),
     Minard.el("td", "num", gap)].forEach(function (td) { tr.appendChild(td); });
    if (j.across) { tr.title = "between two batches (paired by the clock sweep)"; }
    return tr;
  }

  function poll() {
    if (busy || Minard.pause.is()) { return; }
    busy = true;
    Minard.getJSON("get_clock_jumps?limit=200").then(function (r) {
      busy = false;
      while (body.firstChild) { body.removeChild(body.firstChild); }
      // the sweep lists a jump between batches some seconds after the others: by time
      r.jumps.sort(function (a, b) { return b.time - a.time; });
      r.jumps.forEach(function (j) { body.appendChild(row(j)); });
      Minard.text(summary, r.jumps.length ? r.jumps.length + " newest jumps (of the last " +
                  r.kept + " kept), newest first" : "no clock jump recorded");
      summary.className = "hint" + (r.jumps.length ? " warn-text" : "");
    }, function (err) {
      busy = false;
      Minard.text(summary, "cannot read the clock jumps: " + err.message);
      summary.className = "hint bad-text";
    });
  }

  poll();
  setInterval(poll, POLL_MS);
}());
