/* Runs page: run history, newest first (get_runs). The newest runs are read again every
 * POLL_MS (not while the page is paused), so the current run's stop, duration, counts and
 * rates follow it live; "Older runs" pages back (get_runs?before=RUN). Each run links to
 * the Stream page and the TOTAL graph over its time range (the current run: a live window
 * from its start). Everything from the server goes in with textContent.
 */
(function () {
  "use strict";

  var POLL_MS = 5000;
  var PAGE = 50;
  var LIVE_AFTER = 15; // s: a newest run with an event this recent is running
  var body = document.getElementById("runs-body");
  if (!body) { return; }
  var summary = document.getElementById("runs-summary");
  var olderButton = document.getElementById("runs-older");
  var rows = {};       // run -> <tr>
  var order = [];      // runs shown, newest first
  var oldest = null;
  var busy = false;

  function fmtDuration(s) {
    if (s === null || s === undefined) { return "–"; }
    s = Math.max(0, Math.round(s));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + sec + " s";
  }

  function iso(t) { return new Date(t * 1000).toISOString().slice(0, 19) + "Z"; }

  /* the time-range parameters of a run: its span (at least a minute), or, for a run
   * that is still going, a live window from its start */
  function window_(run, live) {
    if (run.start === null) { return null; }
    if (live) {
      return { range: String(Math.max(60, Math.ceil(Minard.nowSeconds() - run.start) + 30)) };
    }
    var start = run.start - 10, stop = Math.max(run.stop === null ? run.start : run.stop, run.start) + 10;
    if (stop - start < 60) { stop = start + 60; }
    return { start: iso(start), stop: iso(stop) };
  }

  function link(text, href) {
    var a = Minard.el("a", null, text);
    a.href = Minard.url(href);
    return a;
  }

  function typeNames(run) {
    if (!run.run_type) { return run.header ? "–" : "no run header"; }
    return run.run_type.length ? run.run_type.join(", ") : "none (mask 0)";
  }

  function triggers(run) {
    var names = Object.keys(run.events || {}).filter(function (n) { return n !== "TOTAL"; });
    names.sort(function (a, b) { return run.events[b] - run.events[a]; });
    return names.map(function (n) { return n + " " + run.events[n]; }).join(" · ");
  }

  function cells(run, live) {
    var total = run.events ? run.events.TOTAL : null;
    var w = window_(run, live);
    var charts = Minard.el("td", "charts");
    if (w) {
      charts.appendChild(link("Stream", "snostream?" + Minard.query(w)));
      charts.appendChild(document.createTextNode(" · "));
      charts.appendChild(link("TOTAL", "graph?" + Minard.query(Object.assign({ name: "TOTAL" }, w))));
    }
    var header = run.header;
    var typeCell = Minard.el("td", "type", typeNames(run));
    if (header) {
      typeCell.title = "run mask 0x" + header.run_mask.toString(16) + ", source mask 0x" +
        header.source_mask.toString(16) + ", crate mask 0x" + header.crate_mask.toString(16) +
        ", first gtid " + header.first_gtid + ", RHDR date " + header.date + " time " + header.time;
    }
    var noData = run.seconds_without_data;
    var out = [
      Minard.el("td", "num run-number", run.run),
      typeCell,
      Minard.el("td", "time", run.start === null ? "–" : Minard.fmtTime(run.start)),
      Minard.el("td", "time" + (live ? " ok-text" : ""), live ? "running" : (run.stop === null ? "no events yet" : Minard.fmtTime(run.stop))),
      Minard.el("td", "num", fmtDuration(run.duration)),
      Minard.el("td", "num", total === null || total === undefined ? "–" : total),
      Minard.el("td", "num", run.mean_rate === null ? "–" : Minard.fmtSI(run.mean_rate)),
      Minard.el("td", "num", run.mean_nhit === null ? "–" : run.mean_nhit.toFixed(1)),
      Minard.el("td", "num" + (noData ? " warn-text" : ""), noData === null ? "–" : noData),
      Minard.el("td", "triggers", triggers(run)),
      charts
    ];
    if (live) { out[3].title = "last event " + Minard.fmtTime(run.stop) + " UTC"; }
    return out;
  }

  function show(run, live, before) {
    var tr = rows[run.run];
    var fresh = !tr;
    if (fresh) {
      tr = document.createElement("tr");
      tr.dataset.run = run.run;
      rows[run.run] = tr;
    }
    tr.classList.toggle("live", !!live);
    while (tr.firstChild) { tr.removeChild(tr.firstChild); }
    cells(run, live).forEach(function (td) { tr.appendChild(td); });
    if (fresh) {
      // keep newest first: insert before the first row of an older run
      var next = null;
      for (var i = 0; i < order.length; i++) {
        if (order[i] < run.run) { next = rows[order[i]]; break; }
      }
      body.insertBefore(tr, next);
      order.push(run.run);
      order.sort(function (a, b) { return b - a; });
    }
  }

  function load(before) {
    var params = { limit: PAGE };
    if (before !== undefined) { params.before = before; }
    return Minard.getJSON("get_runs?" + Minard.query(params)).then(function (r) {
      var now = Minard.nowSeconds();
      r.runs.forEach(function (run) {
        var live = run.run === r.current && run.stop !== null && now - run.stop < LIVE_AFTER;
        show(run, live);
      });
      if (r.runs.length) {
        var last = r.runs[r.runs.length - 1].run;
        if (oldest === null || last < oldest) { oldest = last; }
      }
      if (before !== undefined || oldest === null || r.runs.length === PAGE) {
        olderButton.hidden = r.runs.length < PAGE;
      }
      var current = r.current === null ? "no run yet" : "current run " + r.current;
      Minard.text(summary, order.length + " runs shown, newest first · " + current +
                  " · updated " + Minard.fmtTime(now).slice(11) + " UTC");
      summary.className = "hint";
    }, function (err) {
      Minard.text(summary, "cannot read the runs: " + err.message);
      summary.className = "hint bad-text";
    });
  }

  function poll() {
    if (busy || Minard.pause.is()) { return; }
    busy = true;
    load().then(function () { busy = false; });
  }

  olderButton.addEventListener("click", function () {
    if (oldest !== null) { load(oldest); }
  });
  poll();
  setInterval(poll, POLL_MS);
}());
