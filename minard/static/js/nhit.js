/* NHit: exact nhit histograms, 10 s from /stream, 60 s polled every 5 s (not while the
   page is paused). The x range is kept in the URL (?x=auto|100|300|1000|all), and so is
   the event type (?trigger=100L, polling, NONE ...: then the 10 s histogram is polled
   too, query?name=nhit_hist&trigger=, the per-type histograms of the pull workers).
   The time picker's window (any range, or from/to) has its own pair:
   query?name=nhit_hist&trigger=X&start=&stop=, read when the window changes and every
   WINDOW_MS while it is live. */
(function () {
  "use strict";
  var MAX_BINS = 100, WINDOW_MS = 15000;
  var charts = {};
  [10, 60, "window"].forEach(function (s) {
    ["linear", "log"].forEach(function (scale) {
      charts[s + scale] = Minard.histogram(document.getElementById("nhit-" + s + "-" + scale),
                                           { log: scale === "log", height: 260, label: "events", xLabel: "nhit",
                                             color: Minard.PALETTE[s === 10 ? 0 : s === 60 ? 1 : 2],
                                             xFormat: Minard.fmtInt });
    });
  });
  var rangeSel = document.getElementById("nhit-range");
  function readRange() {
    var x = Minard.params.get("x");
    var known = Array.prototype.some.call(rangeSel.options, function (o) { return o.value === x; });
    rangeSel.value = known ? x : "auto";
  }
  readRange();
  var triggerSel = document.getElementById("nhit-trigger");
  function readTrigger() {
    var t = Minard.params.get("trigger");
    var known = triggerSel && Array.prototype.some.call(triggerSel.options, function (o) { return o.value === t; });
    if (triggerSel) { triggerSel.value = known ? t : "TOTAL"; }
  }
  function trigger() { return triggerSel ? triggerSel.value : "TOTAL"; }
  readTrigger();
  var latest = {};

  function quantile(nhits, events, total, q) {
    var target = q * total, acc = 0;
    for (var i = 0; i < nhits.length; i++) { acc += events[i]; if (acc >= target) { return nhits[i]; } }
    return nhits.length ? nhits[nhits.length - 1] : 0;
  }

  function draw(seconds, hist) {
    latest[seconds] = hist;
    var nhits = hist.nhit || [], events = hist.events || [];
    var total = events.reduce(function (a, b) { return a + b; }, 0);
    var info = document.getElementById("nhit-" + seconds + "-linear-info");
    var infoLog = document.getElementById("nhit-" + seconds + "-log-info");
    if (!total) {
      ["linear", "log"].forEach(function (scale) { charts[seconds + scale].setBins([], [], "no events"); });
      Minard.text(info, "no events");
      Minard.text(infoLog, "no events");
      info.classList.add("nodata");
      infoLog.classList.add("nodata");
      return;
    }
    info.classList.remove("nodata");
    infoLog.classList.remove("nodata");
    var median = quantile(nhits, events, total, 0.5), q3 = quantile(nhits, events, total, 0.75);
    var mean = nhits.reduce(function (a, n, i) { return a + n * events[i]; }, 0) / total;
    var hi;
    if (rangeSel.value === "auto") { hi = Math.max(median + 10 * Math.max(1, q3 - median), 10); }
    else if (rangeSel.value === "all") { hi = nhits[nhits.length - 1] + 1; }
    else { hi = parseInt(rangeSel.value, 10); }
    var width = Math.max(1, Math.ceil(hi / MAX_BINS)), nbins = Math.ceil(hi / width);
    var edges = [], counts = [];
    for (var b = 0; b < nbins; b++) { edges.push(b * width); counts.push(0); }
    var over = 0;
    nhits.forEach(function (n, i) {
      var k = Math.floor(n / width);
      if (k < nbins) { counts[k] += events[i]; } else { over += events[i]; }
    });
    charts[seconds + "linear"].setBins(edges, counts);
    charts[seconds + "log"].setBins(edges, counts);
    var text = Minard.fmtSI(total) + " events · mean " + mean.toFixed(1) + " · median " + median +
               (over ? " · " + Minard.fmtSI(over) + " above " + hi : "");
    Minard.text(info, text);
    Minard.text(infoLog, text);
  }

  Minard.stream.on(function (msg) {
    if (msg.nhit_hist && trigger() === "TOTAL") { draw(10, msg.nhit_hist); }
  });

  function histUrl(seconds) {
    var t = trigger();
    return "query?name=nhit_hist&seconds=" + seconds + (t === "TOTAL" ? "" : "&trigger=" + encodeURIComponent(t));
  }
  function poll(seconds, every) {
    var asked = trigger();
    if (seconds === 10 && asked === "TOTAL") { // live from /stream: look again later
      setTimeout(function () { poll(seconds, every); }, every);
      return;
    }
    Minard.getJSON(histUrl(seconds)).then(function (h) { if (trigger() === asked) { draw(seconds, h); } })
      .catch(function (err) { Minard.text(document.getElementById("nhit-" + seconds + "-linear-info"), "error: " + err.message); })
      .then(function () {
        setTimeout(function () { Minard.pause.whenLive(function () { poll(seconds, every); }, "nhit" + seconds); }, every);
      });
  }
  function poll60() { poll(60, 5000); }
  poll60();
  poll(10, 2000);
  if (triggerSel) {
    triggerSel.addEventListener("change", function () {
      Minard.params.set({ trigger: trigger() === "TOTAL" ? null : trigger() }, false);
      [10, 60].forEach(function (s) {
        if (s === 60 || trigger() !== "TOTAL") { Minard.getJSON(histUrl(s)).then(function (h) { draw(s, h); }); }
      });
    });
  }
  /* the time picker's window */
  var windowTimer = null, windowAsked = 0;
  function windowTitle(w) {
    var sel = Minard.timeRange.select();
    if (w.live && sel && sel.selectedIndex >= 0) { return "Last " + sel.options[sel.selectedIndex].textContent; }
    if (w.live) { return "Last " + Minard.fmtAge(w.span); }
    return Minard.fmtTime(w.t0) + " → " + Minard.fmtTime(w.t1) + " UTC";
  }
  function loadWindow() {
    if (windowTimer) { clearTimeout(windowTimer); windowTimer = null; }
    var w = Minard.timeRange.current(), asked = trigger(), mine = ++windowAsked;
    Array.prototype.forEach.call(document.querySelectorAll(".nhit-window-title"), function (n) {
      Minard.text(n, windowTitle(w));
    });
    var q = Minard.query({ name: "nhit_hist", trigger: asked, start: Math.floor(w.t0),
                           stop: Math.ceil(w.t1) });
    Minard.getJSON("query?" + q).then(function (h) {
      if (mine === windowAsked && trigger() === asked) { draw("window", h); }
    }).catch(function (err) {
      if (mine === windowAsked) { Minard.text(document.getElementById("nhit-window-linear-info"), "error: " + err.message); }
    }).then(function () {
      if (mine === windowAsked && w.live) {
        windowTimer = setTimeout(function () { Minard.pause.whenLive(loadWindow, "nhit-window"); }, WINDOW_MS);
      }
    });
  }
  Minard.timeRange.init(loadWindow);
  if (triggerSel) { triggerSel.addEventListener("change", loadWindow); }

  function redraw() { Object.keys(latest).forEach(function (s) { draw(s === "window" ? s : parseInt(s, 10), latest[s]); }); }
  rangeSel.addEventListener("change", function () {
    Minard.params.set({ x: rangeSel.value === "auto" ? null : rangeSel.value }, false);
    redraw();
  });
  window.addEventListener("popstate", function () { readRange(); readTrigger(); redraw(); });
}());
