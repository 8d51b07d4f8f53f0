/* DAQ: threshold-coloured crate map (query?name=&step=), crate → cards → channels over time
   (metric_hash, owl_tubes). State (data, method, window, thresholds, crate, card) in the URL. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var DEFAULTS = { cmos: [100, 5000], base: [10, 80], occupancy: [0.001, 0.002] };
  var CLASSES = ["#ffeda0", "#feb24c", "#f03b20"]; // colorbrewer YlOrRd, 3 classes
  var tooltip = $("daq-tooltip");
  var state = {};
  var mapTimer = null, seriesTimer = null, generation = 0, mapGeneration = 0;
  var overviewMap = null, crateMap = null;
  var charts = [];

  function readState() {
    var p = new URLSearchParams(location.search);
    var data = p.get("data");
    state.data = DEFAULTS[data] ? data : "cmos";
    state.method = p.get("method") === "max" ? "max" : "avg";
    state.window = ["5", "60", "86400"].indexOf(p.get("window")) >= 0 ? p.get("window") : "60";
    state.lo = parseFloat(p.get("lo"));
    state.hi = parseFloat(p.get("hi"));
    if (!isFinite(state.lo)) { state.lo = DEFAULTS[state.data][0]; }
    if (!isFinite(state.hi)) { state.hi = DEFAULTS[state.data][1]; }
    var crate = parseInt(p.get("crate"), 10), card = parseInt(p.get("card"), 10);
    state.crate = crate >= 0 && crate < 20 ? crate : null;
    state.card = state.crate !== null && card >= 0 && card < 16 ? card : null;
    $("daq-data").value = state.data;
    $("daq-method").value = state.method;
    $("daq-window").value = state.window;
    $("daq-lo").value = state.lo;
    $("daq-hi").value = state.hi;
  }

  function writeState(push) {
    var p = new URLSearchParams(location.search);
    ["data", "method", "window", "lo", "hi", "crate", "card"].forEach(function (k) {
      if (state[k] === null || state[k] === undefined || (k === "lo" && state.lo === DEFAULTS[state.data][0]) ||
          (k === "hi" && state.hi === DEFAULTS[state.data][1])) { p.delete(k); } else { p.set(k, state[k]); }
    });
    history[push ? "pushState" : "replaceState"](null, "", "?" + p.toString());
  }

  function fmt(v) {
    if (state.data === "occupancy") { return v.toExponential(2); }
    return Minard.fmtSI(v);
  }

  function colour(v) { return v < state.lo ? CLASSES[0] : (v > state.hi ? CLASSES[2] : CLASSES[1]); }

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
    Minard.text($("daq-leg-lo"), "< " + fmt(state.lo));
    Minard.text($("daq-leg-mid"), fmt(state.lo) + " – " + fmt(state.hi));
    Minard.text($("daq-leg-hi"), "> " + fmt(state.hi));
    if (level === "crate") {
      crateMap = new Minard.CrateMap($("daq-cardmap"), {
        crates: [state.crate], big: true, onHover: hover, format: fmt,
        onClick: function (crate, card) { go(crate, card); } });
    }
    buildCharts(level);
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
    if (!lastMap) { return; }
    /* the overview map exists once the overview was shown: a crate or card view opened
       straight from its URL (a reload, a bookmark) has none yet */
    if (overviewMap) { overviewMap.draw(lastMap.values, colour); }
    if (crateMap && state.crate !== null && state.card === null) { crateMap.draw(lastMap.values, colour); }
  }

  function loadMap() {
    if (mapTimer) { clearTimeout(mapTimer); }
 var mine = ++mapGeneration;
    Minard.getJSON("query?name=" + state.data + "&step=" + state.window).then(function (answer) {
      if (mine !== mapGeneration) { return; }
      lastMap = answer;
      var n = answer.values.filter(function (v) { return v !== null; }).length;
      Minard.text($("daq-info"), answer.bucket === null ? "no finalised " + state.data + " data for this window" :
                  n + " channels · bucket " + Minard.fmtTime(answer.start) + " UTC + " + answer.interval + " s");
      $("daq-info").className = answer.bucket === null ? "hint nodata" : "hint";
      paint();
    }).catch(function (err) {
      Minard.text($("daq-info"), "cannot load: " + err.message);
      $("daq-info").className = "hint bad-text";
    }).then(function () { if (mine === mapGeneration) { mapTimer = setTimeout(loadMap, 5000); } });
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

  function buildCharts(level) {
    charts = [];
    var zoom = { onZoom: function (a, b) { Minard.timeRange.zoom(a, b); }, onZoomReset: function () { Minard.timeRange.reset(); } };
    if (level === "overview") {
      if (!overviewMap) {
        overviewMap = new Minard.CrateMap($("daq-crates"), { onHover: hover, format: fmt,
                                                             onClick: function (crate) { go(crate); } });
        var owlBox = $("owl-chart");
        charts.owl = Minard.chart(owlBox, Object.assign({ series: [{ label: "OWL" }], height: 180, yFormat: fmt, fill: true, legend: false }, zoom));
        var series = [];
        for (var c = 0; c < 20; c++) { series.push({ label: "crate " + c, color: Minard.ramp(c / 19) }); }
        charts.crates = Minard.chart($("crates-chart"), Object.assign({ series: series, height: 180, yFormat: fmt, legend: false }, zoom));
        buildCharts.overview = { owl: charts.owl, crates: charts.crates };
      }
      charts = [{ chart: buildCharts.overview.owl, path: "owl", value: $("owl-latest") },
                { chart: buildCharts.overview.crates, path: "crates" }];
      return;
    }
    var parent = level === "crate" ? $("daq-card-charts") : $("daq-channel-charts");
    parent.textContent = "";
    var n = level === "crate" ? 16 : 32;
    for (var i = 0; i < n; i++) {
      (function (i) {
        var title = level === "crate" ? "card " + i : "channel " + i + " (" + (state.crate * 512 + state.card * 32 + i) + ")";
        var p = smallPanel(parent, title, level === "crate" ? function () { go(state.crate, i); } : null);
        var chart = Minard.chart(p.box, Object.assign({ series: [{ label: title }], height: 110, yFormat: fmt, legend: false, fill: true }, zoom));
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
        var all = [];
        for (var crate = 0; crate < 20; crate++) {
          all.push(Minard.getJSON("metric_hash?" + Minard.query(Object.assign({ crate: crate }, base))).then(function (a) { return a.values; }));
        }
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
        Minard.text(c.value, latest === null ? "no data" : fmt(latest));
        c.value.classList.toggle("nodata", latest === null);
        c.value.classList.toggle("bad-text", latest !== null && latest > state.hi);
      }
    }
    Promise.all(jobs).catch(function (err) {
      Minard.text($("daq-info"), "cannot load the time series: " + err.message);
    }).then(function () {
      if (mine === generation && w.live) { seriesTimer = setTimeout(loadSeries, Math.max(step, 10) * 1000); }
    });
  }

  /* -- options ------------------------------------------------------------------------ */
  function defaultThresholds() {
    state.lo = DEFAULTS[state.data][0];
    state.hi = DEFAULTS[state.data][1];
    $("daq-lo").value = state.lo;
    $("daq-hi").value = state.hi;
    writeState(false);
    view();
  }
  $("daq-data").addEventListener("change", function () {
    state.data = $("daq-data").value;
    defaultThresholds();
  });
  $("daq-method").addEventListener("change", function () { state.method = $("daq-method").value; writeState(false); loadSeries(); });
  $("daq-window").addEventListener("change", function () { state.window = $("daq-window").value; writeState(false); loadMap(); });
  ["daq-lo", "daq-hi"].forEach(function (id) {
    $(id).addEventListener("change", function () {
      var lo = parseFloat($("daq-lo").value), hi = parseFloat($("daq-hi").value);
      if (isFinite(lo) && isFinite(hi)) { state.lo = lo; state.hi = hi; writeState(false); view(); }
    });
  });
  $("daq-reset").addEventListener("click", defaultThresholds);
  $("crumb-all").addEventListener("click", function (e) { e.preventDefault(); go(null); });
  $("crumb-crate").addEventListener("click", function (e) { e.preventDefault(); go(state.crate); });
  window.addEventListener("popstate", function () { readState(); view(); });

  readState();
  Minard.timeRange.init(function () { if (charts.length) { loadSeries(); } });
  view();
}());
