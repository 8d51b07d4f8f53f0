/* DAQ: threshold-coloured crate map (query?name=&step=), crate → cards → channels over time
   (metric_hash, owl_tubes). State (data, method, window, thresholds, crate, card) in the URL.

   Colours mean something by default: a channel is "low", "normal" or "high" against LO/HI
   thresholds that follow the detector's own median over the channels of the map shown
   (constants.DAQ_THRESHOLDS, in the page as data-thresholds: CMOS rate and occupancy
   LO = lo × median, HI = hi × median; base current median ∓ band), so a normal detector
   looks normal and the outliers (dead, hot, noisy) stand out. Thresholds typed in the LO /
   HI fields are kept in the URL (lo=, hi=) until "auto thresholds" is pressed. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var CONF = JSON.parse($("daq-options").dataset.thresholds);
  var LABELS = { cmos: "CMOS rate", base: "base current", occupancy: "occupancy" };
  var tooltip = $("daq-tooltip");
  var state = {};
  var mapTimer = null, seriesTimer = null, generation = 0, mapGeneration = 0;
  var overviewMap = null, crateMap = null;
  var charts = [];
  var auto = { lo: null, hi: null, median: null, n: 0 }; // the thresholds the median gives

  function cssVar(name, fallback) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
  }
  var COLOURS = {
    low: function () { return cssVar("--daq-low", "#3f7fd9"); },
    normal: function () { return cssVar("--daq-normal", "#3d8b57"); },
    high: function () { return cssVar("--daq-high", "#e5534b"); }
  };

  function unit() { return CONF[state.data].unit; }

  function readState() {
    var p = new URLSearchParams(location.search);
    var data = p.get("data");
    state.data = CONF[data] ? data : "cmos";
    state.method = p.get("method") === "max" ? "max" : "avg";
    state.window = ["5", "60", "86400"].indexOf(p.get("window")) >= 0 ? p.get("window") : "60";
    var lo = parseFloat(p.get("lo")), hi = parseFloat(p.get("hi"));
    state.auto = !(isFinite(lo) && isFinite(hi) && hi >= lo);
    state.lo = state.auto ? null : lo;
    state.hi = state.auto ? null : hi;
    var crate = parseInt(p.get("crate"), 10), card = parseInt(p.get("card"), 10);
    state.crate = crate >= 0 && crate < 20 ? crate : null;
    state.card = state.crate !== null && card >= 0 && card < 16 ? card : null;
    $("daq-data").value = state.data;
    $("daq-method").value = state.method;
    $("daq-window").value = state.window;
    showThresholdFields();
  }

  function writeState(push) {
    var p = new URLSearchParams(location.search);
    ["data", "method", "window", "lo", "hi", "crate", "card"].forEach(function (k) {
      var v = state[k];
      if ((k === "lo" || k === "hi") && state.auto) { v = null; }
      if (v === null || v === undefined) { p.delete(k); } else { p.set(k, v); }
    });
    history[push ? "pushState" : "replaceState"](null, "", "?" + p.toString());
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) { return "–"; }
    if (state.data === "occupancy") { return v === 0 ? "0" : v.toExponential(2); }
    if (state.data === "base") { return String(+v.toFixed(Math.abs(v) >= 10 ? 1 : 2)); }
    return Minard.fmtSI(v);
  }
  function withUnit(v) { return fmt(v) + " " + unit(); }

  /* -- thresholds ----------------------------------------------------------------------- */
  function median(values) {
    var xs = [];
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      if (v !== null && v !== undefined && Minard.CrateMap.isInstalled(i >> 9)) { xs.push(v); }
    }
    if (!xs.length) { return { median: null, n: 0 }; }
    xs.sort(function (a, b) { return a - b; });
    var m = xs.length % 2 ? xs[(xs.length - 1) / 2] : (xs[xs.length / 2 - 1] + xs[xs.length / 2]) / 2;
    return { median: m, n: xs.length };
  }

  function computeAuto(values) {
    var m = median(values || []), c = CONF[state.data];
    auto = { median: m.median, n: m.n, lo: null, hi: null };
    if (m.median === null) { return; }
    if (c.band !== undefined) {
      auto.lo = m.median - c.band;
      auto.hi = m.median + c.band;
    } else if (m.median > 0) {
      auto.lo = m.median * c.lo;
      auto.hi = m.median * c.hi;
    } else { // most channels read 0: anything above 0 stands out, 0 is "low"
      auto.lo = Number.MIN_VALUE;
      auto.hi = Number.MIN_VALUE;
    }
  }

  function thresholds() {
    return state.auto ? { lo: auto.lo, hi: auto.hi } : { lo: state.lo, hi: state.hi };
  }

  function classOf(v) {
    var t = thresholds();
    if (t.lo === null || t.hi === null) { return "normal"; }
    return v < t.lo ? "low" : (v > t.hi ? "high" : "normal");
  }

  function colourFunction() {
    var c = { low: COLOURS.low(), normal: COLOURS.normal(), high: COLOURS.high() };
    return function (v) { return c[classOf(v)]; };
  }

  function showThresholdFields() {
    var t = thresholds();
    ["lo", "hi"].forEach(function (k) {
      var field = $("daq-" + k);
      field.value = t[k] === null || t[k] === Number.MIN_VALUE ? "" : +t[k].toPrecision(3);
      field.classList.toggle("auto", state.auto);
      field.title = state.auto ? "automatic (from the median); type a value to fix it" : "set by you";
    });
  }

  function describe(counts) {
    var t = thresholds(), c = CONF[state.data], u = " " + unit();
    var known = t.lo !== null && t.hi !== null && t.lo !== Number.MIN_VALUE;
    Minard.text($("daq-leg-lo"), "low" + (known ? " < " + fmt(t.lo) + u : "") + (counts ? " (" + counts.low + ")" : ""));
    Minard.text($("daq-leg-mid"), "normal" + (known ? " " + fmt(t.lo) + " – " + fmt(t.hi) + u : "") +
                (counts ? " (" + counts.normal + ")" : ""));
    Minard.text($("daq-leg-hi"), "high" + (known ? " > " + fmt(t.hi) + u : "") + (counts ? " (" + counts.high + ")" : ""));
    Minard.text($("daq-leg-nodata"), "no data" + (counts ? " (" + counts.nodata + ")" : ""));
    var how;
    if (!state.auto) {
      how = "thresholds set by you (kept in the URL)";
    } else if (auto.median === null) {
      how = "thresholds: automatic, from the median (no data yet)";
    } else {
      how = "thresholds: automatic, " + (c.band !== undefined
        ? "median ∓ " + c.band + " " + unit()
        : "LO = " + c.lo + " × median, HI = " + c.hi + " × median") +
        " (median " + withUnit(auto.median) + " over " + auto.n + " channels)";
    }
    Minard.text($("daq-thresholds"), how);
    $("daq-reset").hidden = state.auto;
  }

  function hover(t) { Minard.text(tooltip, t); }

  function view() {
    var level = state.card !== null ? "card" : (state.crate !== null ? "crate" : "overview");
    $("daq-overview").hidden = level !== "overview";
    $("daq-crate").hidden = level !== "crate";
    $("daq-card").hidden = level !== "card";
    $("crumb-crate-sep").hidden = $("crumb-crate").hidden = state.crate === null;
    $("crumb-card-sep").hidden = $("crumb-card").hidden = state.card === null;
    if (state.crate !== null) { Minard.text($("crumb-crate"), "crate " + state.crate); }
    if (state.card !== null) { Minard.text($("crumb-card"), "card " + state.card); }
    Array.prototype.forEach.call(document.querySelectorAll(".daq-unit"), function (e) { Minard.text(e, unit()); });
    describe(null);
    if (level === "crate") {
      crateMap = new Minard.CrateMap($("daq-cardmap"), {
        crates: [state.crate], big: true, onHover: hover, format: fmt, unit: unit(),
        onClick: function (crate, card) { go(crate, card); } });
      if (Minard.healthMarks) { Minard.healthMarks.attach(crateMap); } // flagged: outlined
    }
    if (overviewMap) { overviewMap.opts.unit = unit(); }
    buildCharts(level);
    paint();
    loadMap();
    loadSeries();
  }

  function go(crate, card) {
    state.crate = crate;
    state.card = card === undefined ? null : card;
    writeState(true);
    view();
  }

  /* -- the crate map ------------------------------------------------------------------ */
  var lastMap = null;
  function paint() {
    if (!lastMap || lastMap.name !== state.data) {
      if (overviewMap) { overviewMap.clear(); }
      if (crateMap) { crateMap.clear(); }
      return;
    }
    computeAuto(lastMap.values);
    showThresholdFields();
    var colour = colourFunction();
    var counts = { low: 0, normal: 0, high: 0, nodata: 0 };
    lastMap.values.forEach(function (v, i) {
      if (!Minard.CrateMap.isInstalled(i >> 9)) { return; }
      if (v === null || v === undefined) { counts.nodata += 1; } else { counts[classOf(v)] += 1; }
    });
    describe(counts);
    /* the overview map exists once the overview was shown: a crate or card view opened
       straight from its URL (a reload, a bookmark) has none yet */
    if (overviewMap) { overviewMap.draw(lastMap.values, colour); }
    if (crateMap && state.crate !== null && state.card === null) { crateMap.draw(lastMap.values, colour); }
    charts.forEach(function (c) { if (c.flag) { c.flag(); } });
  }

  function loadMap() {
    if (mapTimer) { clearTimeout(mapTimer); }
    var mine = ++mapGeneration, name = state.data;
    Minard.getJSON("query?name=" + name + "&step=" + state.window).then(function (answer) {
      if (mine !== mapGeneration) { return; }
      answer.name = name;
      lastMap = answer;
      var n = answer.values.filter(function (v) { return v !== null; }).length;
      var info;
      if (answer.bucket === null) {
        info = "no " + LABELS[name] + " data for this window yet";
      } else if (answer.final === false) {
        info = n + " channels · not finalised yet: " + Minard.fmtTime(answer.start) + " → " +
               Minard.fmtTime(answer.stop) + " UTC so far";
      } else {
        info = n + " channels · bucket " + Minard.fmtTime(answer.start) + " UTC + " + answer.interval + " s";
      }
      Minard.text($("daq-info"), info);
      $("daq-info").className = answer.bucket === null ? "hint nodata" : (answer.final === false ? "hint warn-text" : "hint");
      paint();
    }).catch(function (err) {
      Minard.text($("daq-info"), "cannot load: " + err.message);
      $("daq-info").className = "hint bad-text";
    }).then(function () {
      if (mine === mapGeneration) { mapTimer = setTimeout(function () { Minard.pause.whenLive(loadMap); }, 5000); }
    });
  }

  /* -- time series -------------------------------------------------------------------- */
  function smallPanel(parent, title, onClick) {
    var panel = Minard.el("div", "panel" + (onClick ? " clickable" : ""));
    var h = Minard.el("h2");
    h.appendChild(Minard.el("span", null, title));
    var value = Minard.el("span", "value");
    h.appendChild(value);
    panel.appendChild(h);
    var box = Minard.el("div", "chart");
    panel.appendChild(box);
    parent.appendChild(panel);
    if (onClick) { h.addEventListener("click", onClick); }
    return { box: box, value: value };
  }

  function installedList() {
    var out = [];
    for (var c = 0; c < 20; c++) { if (Minard.CrateMap.isInstalled(c)) { out.push(c); } }
    return out;
  }

  function buildCharts(level) {
    charts = [];
    var zoom = { onZoom: function (a, b) { Minard.timeRange.zoom(a, b); }, onZoomReset: function () { Minard.timeRange.reset(); },
                 yLabel: function () { return LABELS[state.data] + " (" + unit() + ")"; } }; // read at every draw
    if (level === "overview") {
      if (!overviewMap) {
        overviewMap = new Minard.CrateMap($("daq-crates"), { onHover: hover, format: fmt, unit: unit(),
                                                             onClick: function (crate) { go(crate); } });
        if (Minard.healthMarks) { Minard.healthMarks.attach(overviewMap); } // flagged: outlined
        var owlBox = $("owl-chart");
        charts.owl = Minard.chart(owlBox, Object.assign({ series: [{ label: "OWL" }], height: 180, yFormat: fmt, fill: true, legend: false }, zoom));
        var series = [], crates = installedList();
        crates.forEach(function (c, k) { series.push({ label: "crate " + c, color: Minard.ramp(k / Math.max(1, crates.length - 1)) }); });
        charts.crates = Minard.chart($("crates-chart"), Object.assign({ series: series, height: 180, yFormat: fmt, legend: false }, zoom));
        buildCharts.overview = { owl: charts.owl, crates: charts.crates };
      }
      charts = [{ chart: buildCharts.overview.owl, path: "owl", value: $("owl-latest") },
                { chart: buildCharts.overview.crates, path: "crates" }];
      return;
    }
    var parent = level === "crate" ? $("daq-card-charts") : $("daq-channel-charts");
    parent.textContent = "";
    if (!Minard.CrateMap.isInstalled(state.crate)) {
      parent.appendChild(Minard.el("p", "message nodata", "crate " + state.crate + " is not installed in SNO+: it has no channels."));
      return;
    }
    var n = level === "crate" ? 16 : 32;
    for (var i = 0; i < n; i++) {
      (function (i) {
        var title = level === "crate" ? "card " + i : "channel " + i + " (" + (state.crate * 512 + state.card * 32 + i) + ")";
        var p = smallPanel(parent, title, level === "crate" ? function () { go(state.crate, i); } : null);
        var chart = Minard.chart(p.box, Object.assign({ series: [{ label: title }], height: 130, yFormat: fmt, legend: false, fill: true }, zoom));
        charts.push({ chart: chart, value: p.value,
                      query: level === "crate" ? { crate: state.crate, card: i } : { crate: state.crate, card: state.card, channel: i } });
      }(i));
    }
  }

  function loadSeries() {
    if (seriesTimer) { clearTimeout(seriesTimer); }
    var mine = ++generation;
    var w = Minard.timeRange.current();
    var step = Math.max(w.step, 5);
    var start = Math.floor(w.start / step) * step, stop = Math.ceil(w.stop / step) * step;
    var base = { name: state.data, start: start, stop: stop, step: step, method: state.method, now: Minard.nowSeconds() };
    var xs = [];
    for (var t = start; t < stop; t += step) { xs.push(t); }
    var jobs = [];
    charts.forEach(function (c) {
      if (c.path === "owl") {
        jobs.push(Minard.getJSON("owl_tubes?" + Minard.query(base)).then(function (a) { show(c, [a.values]); }));
      } else if (c.path === "crates") {
        var all = installedList().map(function (crate) {
          return Minard.getJSON("metric_hash?" + Minard.query(Object.assign({ crate: crate }, base))).then(function (a) { return a.values; });
        });
        jobs.push(Promise.all(all).then(function (vals) { show(c, vals); }));
      } else {
        jobs.push(Minard.getJSON("metric_hash?" + Minard.query(Object.assign({}, base, c.query))).then(function (a) { show(c, [a.values]); }));
      }
    });
    function show(c, series) {
      if (mine !== generation) { return; }
      c.chart.setData([xs].concat(series));
      if (c.value) {
        var ys = series[0], latest = null;
        for (var i = ys.length - 1; i >= 0; i--) { if (ys[i] !== null) { latest = ys[i]; break; } }
        c.flag = function () { // the latest value, coloured as the map would colour it
          Minard.text(c.value, latest === null ? "no data" : withUnit(latest));
          c.value.classList.toggle("nodata", latest === null);
          c.value.classList.toggle("bad-text", latest !== null && classOf(latest) !== "normal");
        };
        c.flag();
      }
    }
    Promise.all(jobs).catch(function (err) {
      Minard.text($("daq-info"), "cannot load the time series: " + err.message);
    }).then(function () {
      if (mine === generation && w.live) {
        seriesTimer = setTimeout(function () { Minard.pause.whenLive(loadSeries); }, Math.max(step, 10) * 1000);
      }
    });
  }

  /* -- options ------------------------------------------------------------------------ */
  function autoThresholds() {
    state.auto = true;
    state.lo = state.hi = null;
    writeState(false);
    showThresholdFields();
    paint();
  }
  $("daq-data").addEventListener("change", function () {
    state.data = $("daq-data").value;
    state.auto = true; // another quantity: its own automatic thresholds
    state.lo = state.hi = null;
    writeState(false);
    view();
  });
  $("daq-method").addEventListener("change", function () { state.method = $("daq-method").value; writeState(false); loadSeries(); });
  $("daq-window").addEventListener("change", function () {
    state.window = $("daq-window").value;
    writeState(false);
    lastMap = null; // the old window's map is not this window's: nothing until it loads
    paint();
    loadMap();
  });
  ["daq-lo", "daq-hi"].forEach(function (id) {
    $(id).addEventListener("change", function () {
      var lo = parseFloat($("daq-lo").value), hi = parseFloat($("daq-hi").value);
      var ok = isFinite(lo) && isFinite(hi) && hi >= lo;
      $("daq-lo").classList.toggle("invalid", !ok);
      $("daq-hi").classList.toggle("invalid", !ok);
      if (ok) { state.auto = false; state.lo = lo; state.hi = hi; writeState(false); showThresholdFields(); paint(); }
    });
  });
  $("daq-reset").addEventListener("click", autoThresholds);
  $("crumb-all").addEventListener("click", function (e) { e.preventDefault(); go(null); });
  $("crumb-crate").addEventListener("click", function (e) { e.preventDefault(); go(state.crate); });
  window.addEventListener("popstate", function () { readState(); view(); });

  readState();
  Minard.timeRange.init(function () { if (charts.length) { loadSeries(); } });
  view();
}());
