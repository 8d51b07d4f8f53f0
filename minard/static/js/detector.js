/* Detector: occupancy of all 10240 channels, refreshed every 5 s.

   The window (5 s, 1 min, 1 day) shows the newest finalised bucket; when there is none yet
   (the first day of the 1-day window) the server answers the bucket being filled ("final":
   false) or a finer one ("interval" < "asked"), and the page says which. Whatever the map
   shows, the legend, histograms and tooltip are of those data: when the data go, they go.
   Window and scale are kept in the URL (window=, scale=, lo=, hi=).

   "Show" picks a run instead (run=N or run=current, and trigger=X in the URL): the
   occupancy of one event type over that run (/get_runs lists the runs, /get_run?run= its
   types, /run_occupancy?run=&trigger= the map); the current run's is read again every 5 s. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var UNIT = "hits/event";
  var WINDOWS = { "5": "5 s", "60": "1 min", "86400": "1 day" };
  var tooltip = $("det-tooltip");
  var map = new Minard.CrateMap($("det-crates"), { onHover: function (t) { Minard.text(tooltip, t); },
                                                   format: function (v) { return v.toExponential(2); },
                                                   unit: UNIT });
  if (Minard.healthMarks) { Minard.healthMarks.attach(map); } // flagged channels outlined
  var hist = Minard.histogram($("det-hist"), { label: "channels", xLabel: "occupancy (" + UNIT + ")", xFormat: function (v) { return v.toExponential(1); } });
  var histLog = Minard.histogram($("det-hist-log"), { log: true, label: "channels", xLabel: "occupancy (" + UNIT + ")", xFormat: function (v) { return v.toExponential(1); } });
  var last = null, timer = null, generation = 0;
  var runTypes = {}; // run ("current" or N) -> its occupancy_types, as last read
  function runChoice() { return $("det-run").value; }

  function percentile(sorted, q) { return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]; }

  function readState() {
    var p = new URLSearchParams(location.search);
    $("det-window").value = WINDOWS[p.get("window")] ? p.get("window") : "60";
    setRun(p.get("run") || "", p.get("trigger"));
    var lo = parseFloat(p.get("lo")), hi = parseFloat(p.get("hi"));
    if (p.get("scale") === "fixed" && isFinite(lo) && isFinite(hi)) {
      $("det-scale").value = "fixed";
      $("det-lo").value = lo;
      $("det-hi").value = hi;
    } else {
      $("det-scale").value = "auto";
    }
  }

  function writeState() {
    var p = new URLSearchParams(location.search);
    var set = function (k, v) { if (v === null) { p.delete(k); } else { p.set(k, v); } };
    set("window", $("det-window").value === "60" ? null : $("det-window").value);
    set("run", runChoice() || null);
    set("trigger", runChoice() && $("det-trigger").value ? $("det-trigger").value : null);
    var fixed = $("det-scale").value === "fixed";
    set("scale", fixed ? "fixed" : null);
    set("lo", fixed ? $("det-lo").value : null);
    set("hi", fixed ? $("det-hi").value : null);
    history.replaceState(null, "", "?" + p.toString());
  }

  /* The run selector: a run that is not in the list (yet) gets an option of its own. */
  function setRun(run, trigger) {
    var sel = $("det-run");
    if (run && run !== "current" && !/^\d+$/.test(run)) { run = ""; }
    if (run && !sel.querySelector('option[value="' + run + '"]')) {
      var opt = Minard.el("option", null, "run " + run);
      opt.value = run;
      sel.appendChild(opt);
    }
    sel.value = run;
    $("det-window-label").hidden = !!run;
    $("det-trigger-label").hidden = !run;
    if (trigger) { $("det-trigger").dataset.wanted = trigger; }
  }
  function listRuns() {
    Minard.getJSON("get_runs?limit=100").then(function (r) {
      var sel = $("det-run"), chosen = sel.value;
      (r.runs || []).forEach(function (run) {
        var value = String(run.run), opt = sel.querySelector('option[value="' + value + '"]');
        if (!opt) { opt = Minard.el("option"); opt.value = value; sel.appendChild(opt); }
        Minard.text(opt, "run " + value + (run.run === r.current ? " (current)" : "") +
                    (run.start ? " · " + Minard.fmtTime(run.start).slice(0, 16) : ""));
      });
      if (r.current !== null && r.current !== undefined) {
        Minard.text(sel.querySelector('option[value="current"]'), "current run (" + r.current + ")");
      }
      sel.value = chosen;
    }).catch(function () { /* the list stays as it is: a run in the URL still shows */ });
  }
  function fillTriggers(types) {
    var sel = $("det-trigger"), wanted = sel.dataset.wanted || sel.value;
    sel.textContent = "";
    types.forEach(function (t) { var o = Minard.el("option", null, t); o.value = t; sel.appendChild(o); });
    if (types.indexOf(wanted) >= 0) { sel.value = wanted; }
    else if (types.indexOf("TOTAL") >= 0) { sel.value = "TOTAL"; }
    delete sel.dataset.wanted;
    return sel.value;
  }

  /* No data to show: nothing of the data shown before stays on the screen. */
  function showNothing(text, cls) {
    map.clear();
    Minard.legend($("det-legend-bar"), null);
    Minard.text($("det-legend-lo"), "");
    Minard.text($("det-legend-hi"), "");
    hist.setBins([], []);
    histLog.setBins([], []);
    Minard.text($("det-summary"), "no data");
    Minard.text($("det-info"), text);
    $("det-info").className = cls || "hint nodata";
  }

  var NOUNS = { "5": "5-s bucket", "60": "minute", "86400": "day" };
  function noun(interval) { return NOUNS[String(interval)] || interval + "-s bucket"; }

  function describe(answer, n) {
    if (answer.run !== undefined) {
      return { cls: "hint", text: "run " + answer.run + " · " + answer.trigger + " events: " +
               Minard.fmtInt(answer.events) + " · " + n + " channels with data" };
    }
    var what = noun(answer.asked || answer.interval);
    if (answer.final === false) {
      return { cls: "hint warn-text",
               text: "no finalised " + what + " yet — showing this " + what + " so far (not final): " +
                     Minard.fmtTime(answer.start) + " → " + Minard.fmtTime(answer.stop) + " UTC · " + n + " channels with data" };
    }
    if (answer.asked && answer.interval !== answer.asked) {
      return { cls: "hint warn-text",
               text: "no " + what + " of data yet — showing the last " + noun(answer.interval) + ": " +
                     Minard.fmtTime(answer.start) + " UTC + " + answer.interval + " s · " + n + " channels with data" };
    }
    return { cls: "hint", text: n + " channels with data · bucket " + Minard.fmtTime(answer.start) + " UTC + " + answer.interval + " s" };
  }

  function draw() {
    if (!last) { return; }
    var values = last.values;
    var present = values.filter(function (v) { return v !== null; }).sort(function (a, b) { return a - b; });
    if (!present.length) {
      showNothing(last.run !== undefined ? "no occupancy of " + last.trigger + " events in run " + last.run :
                  "no occupancy for the " + (WINDOWS[$("det-window").value] || "") + " window yet");
      return;
    }
    var lo, hi;
    if ($("det-scale").value === "auto") {
      lo = percentile(present, 0.01);
      hi = percentile(present, 0.99);
      $("det-lo").value = +lo.toPrecision(3);
      $("det-hi").value = +hi.toPrecision(3);
    } else {
      lo = parseFloat($("det-lo").value) || 0;
      hi = parseFloat($("det-hi").value) || 1;
    }
    if (!(hi > lo)) { hi = lo + 1e-9; }
    var colour = function (v) { return Minard.ramp((v - lo) / (hi - lo)); };
    map.draw(values, colour);
    Minard.legend($("det-legend-bar"), colour, lo, hi);
    Minard.text($("det-legend-lo"), lo.toExponential(2));
    Minard.text($("det-legend-hi"), hi.toExponential(2) + " " + UNIT);
    var info = describe(last, present.length);
    Minard.text($("det-info"), info.text);
    $("det-info").className = info.cls;
    var top = hi + (hi - lo);
    var shown = present.filter(function (v) { return v <= top; });
    hist.setValues(shown, 50);
    histLog.setValues(shown, 50);
    var mean = present.reduce(function (a, b) { return a + b; }, 0) / present.length;
    var above = present.length - shown.length;
    Minard.text($("det-summary"), "mean " + mean.toExponential(2) + " · median " + percentile(present, 0.5).toExponential(2) +
                (above ? " · " + above + " channels above " + top.toExponential(1) + " not shown" : ""));
  }

  /* A run's map: its event types (once per run), then the map of the chosen one. */
  function readRun(run) {
    var types = runTypes[run] && run !== "current" ? Promise.resolve(runTypes[run]) :
      Minard.getJSON("get_run?run=" + encodeURIComponent(run)).then(function (r) {
        runTypes[run] = r.occupancy_types || [];
        return runTypes[run];
      });
    return types.then(function (list) {
      var trigger = fillTriggers(list);
      if (!trigger) { throw new Error("no occupancy map kept for run " + run); }
      writeState();
      return Minard.getJSON("run_occupancy?" + Minard.query({ run: run, trigger: trigger }));
    });
  }

  function load() {
    if (timer) { clearTimeout(timer); }
    var mine = ++generation, run = runChoice();
    var asked = run ? readRun(run) : Minard.getJSON("query?name=occupancy&step=" + $("det-window").value);
    asked.then(function (answer) {
      if (mine !== generation) { return; }
      last = answer;
      draw();
    }).catch(function (err) {
      if (mine !== generation) { return; }
      last = null;
      showNothing("cannot load occupancy: " + err.message, "hint bad-text");
    }).then(function () {
      if (mine === generation && (!run || run === "current")) { timer = setTimeout(function () { Minard.pause.whenLive(load); }, 5000); }
    });
  }

  $("det-window").addEventListener("change", function () {
    writeState();
    last = null;
    showNothing("loading the " + WINDOWS[$("det-window").value] + " window…", "hint");
    load();
  });
  $("det-run").addEventListener("change", function () {
    setRun(runChoice(), $("det-trigger").value);
    writeState();
    last = null;
    showNothing(runChoice() ? "loading run " + runChoice() + "…" : "loading the " + WINDOWS[$("det-window").value] + " window…", "hint");
    load();
  });
  $("det-trigger").addEventListener("change", function () {
    writeState();
    last = null;
    showNothing("loading " + $("det-trigger").value + " events of run " + runChoice() + "…", "hint");
    load();
  });
  $("det-scale").addEventListener("change", function () { writeState(); draw(); });
  ["det-lo", "det-hi"].forEach(function (id) {
    $(id).addEventListener("change", function () { $("det-scale").value = "fixed"; writeState(); draw(); });
  });
  window.addEventListener("popstate", function () { readState(); last = null; load(); });
  readState();
  listRuns();
  load();
}());
