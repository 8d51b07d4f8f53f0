/* series.js: panels of time series (.panel[data-expr]) drawn with uPlot.
 *
 * History comes from one metric?expr=a,b,c request for the window of the time-range
 * control; while the window is live it follows /stream (step 1, one message a second) or
 * re-reads the window every max(step, 5) s (not while the page is paused). Dragging on a
 * chart zooms (the window goes in the URL); double-click goes back. Clicking a chart (or
 * its title) opens graph?name=. A second without a value is null: a gap, never 0.
 *
 * Panel attributes: data-expr, data-label, data-ylabel (y-axis title; default from
 * Minard.yTitle), data-kind="raw" (integers), data-big, data-yzero="1" (always from 0).
 *
 * opts: live(msg, expr) -> value for a /stream message (undefined: not live),
 *       mask(values) -> optional {expr: [bool]} "no data" mask applied to rate series,
 *       extraExprs: expressions fetched but not drawn (e.g. heartbeat for the mask),
 *       derived: {expr: function(series, i) -> value} computed panels.
 */
(function () {
  "use strict";

  var num = Minard.num;

  function SeriesPanels(opts) {
    var self = this;
    this.opts = opts || {};
    this.panels = Array.prototype.slice.call(document.querySelectorAll(this.opts.selector || ".panel[data-expr]"));
    this.derived = this.opts.derived || {};
    this.exprs = [];
    this.panels.forEach(function (p) {
      if (!self.derived[p.dataset.expr] && self.exprs.indexOf(p.dataset.expr) < 0) { self.exprs.push(p.dataset.expr); }
    });
    (this.opts.extraExprs || []).forEach(function (e) { if (self.exprs.indexOf(e) < 0) { self.exprs.push(e); } });
    this.charts = {};
    this.xs = [];
    this.ys = {};
    this.window = null;
    this.timer = null;
    this.generation = 0;
    this.panels.forEach(function (p) { self._setupPanel(p); });
    Minard.timeRange.init(function (w) { self.load(w); });
    Minard.stream.on(function (msg) { self.onStream(msg); });
  }

  SeriesPanels.prototype._setupPanel = function (panel) {
    var self = this, expr = panel.dataset.expr;
    var title = panel.querySelector("h2 span");
    if (title && panel.classList.contains("clickable")) {
      var a = Minard.el("a", "series-link", title.textContent);
      a.href = Minard.url("graph?name=" + encodeURIComponent(expr));
      title.textContent = "";
      title.appendChild(a);
      this._links = this._links || [];
      this._links.push([a, expr]);
    }
    var box = panel.querySelector(".chart");
    var raw = panel.dataset.kind === "raw";
    var fmt = raw ? Minard.fmtInt : Minard.fmtSI;
    var chart = Minard.chart(box, {
      series: [{ label: panel.dataset.label || expr }],
      height: panel.dataset.big ? 240 : 130,
      legend: false,
      fill: true,
      yFormat: fmt,
      yLabel: panel.dataset.ylabel || Minard.yTitle(expr),
      yZero: panel.dataset.yzero === "1",
      onZoom: function (a, b) { Minard.timeRange.zoom(a, b); },
      onZoomReset: function () { Minard.timeRange.reset(); }
    });
    chart.panel = panel;
    chart.fmt = fmt;
    chart.valueEl = panel.querySelector("h2 .value");
    if (panel.classList.contains("clickable")) {
      var downX = null;
      chart.plot.over.addEventListener("mousedown", function (e) { downX = e.clientX; });
      chart.plot.over.addEventListener("click", function (e) {
        if (downX !== null && Math.abs(e.clientX - downX) < 3) { location.href = self.graphUrl(expr); }
      });
    }
    this.charts[expr] = chart;
  };

  SeriesPanels.prototype.graphUrl = function (expr) {
    var w = this.window || Minard.timeRange.current();
    var q = { name: expr };
    if (w.live) {
      var p = new URLSearchParams(location.search);
      if (p.get("range")) { q.range = p.get("range"); }
    } else {
      q.start = new Date(w.start * 1000).toISOString();
      q.stop = new Date(w.stop * 1000).toISOString();
    }
    return Minard.url("graph?" + Minard.query(q));
  };

  SeriesPanels.prototype.load = function (w) {
    var self = this;
    var generation = ++this.generation;
    this.window = w;
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    (this._links || []).forEach(function (pair) { pair[0].href = self.graphUrl(pair[1]); });
    var path = "metric?" + Minard.query({ expr: this.exprs.join(","), start: w.start, stop: w.stop,
                                          step: w.step, now: Minard.nowSeconds() });
    Minard.getJSON(path).then(function (answer) {
      if (generation !== self.generation) { return; }
      var values = self.exprs.length === 1 && !Array.isArray(answer.values) ? answer.values : answer.values;
      if (Array.isArray(values)) { var one = {}; one[self.exprs[0]] = values; values = one; }
      self.xs = [];
      for (var t = w.start; t < w.stop; t += w.step) { self.xs.push(t); }
      self.ys = {};
      var now = Minard.nowSeconds();
      self.exprs.forEach(function (e) {
        // one value per point: a value the answer lacks is null (a gap), not 0
        self.ys[e] = self.xs.map(function (x, i) { return num((values[e] || [])[i]); });
        if (w.live && Minard.isRate(e)) { Minard.dropPartial(self.xs, self.ys[e], w.step, now); }
      });
      self.applyMask(0);
      self.draw();
      self.setState("");
    }).catch(function (err) {
      self.setState("cannot load the history: " + err.message);
    }).then(function () {
      if (generation !== self.generation) { return; }
      if (w.live && (w.step > 1 || !self.opts.live)) {
        self.timer = setTimeout(function () {
          Minard.pause.whenLive(function () { self.load(Minard.timeRange.current()); }, self);
        }, Math.max(w.step, 5) * 1000);
      }
    });
  };

  SeriesPanels.prototype.applyMask = function (from) {
    if (!this.opts.mask) { return; }
    var mask = this.opts.mask(this.ys, from);
    var self = this;
    Object.keys(mask || {}).forEach(function (e) {
      var m = mask[e], ys = self.ys[e];
      if (!ys) { return; }
      for (var i = from; i < ys.length; i++) { if (m[i - from]) { ys[i] = null; } }
    });
  };

  SeriesPanels.prototype.setState = function (text) {
    var el = document.getElementById("series-state");
    if (!el && text) {
      el = Minard.el("p", "message bad-text");
      el.id = "series-state";
      document.getElementById("main").insertBefore(el, document.getElementById("main").firstChild);
    }
    if (el) { Minard.text(el, text); el.hidden = !text; }
  };

  SeriesPanels.prototype.onStream = function (msg) {
    var w = this.window;
    if (!w || !w.live || w.step !== 1 || !this.opts.live || msg.time === undefined || !this.xs.length) { return; }
    var last = this.xs[this.xs.length - 1];
    if (msg.previous && msg.previous.time !== undefined) {
      // the second before, read again: complete now even if a worker flushed it late
      var kp = this.xs.indexOf(msg.previous.time);
      if (kp >= 0) { this._put(msg.previous, kp); }
    }
    if (msg.time <= last) {
      // history already has this second (possibly before every worker flushed it): refresh it
      var k = this.xs.indexOf(msg.time);
      if (k < 0) { return; }
      this._put(msg, k);
    } else {
      for (var t = last + 1; t <= msg.time; t++) {
        this.xs.push(t);
        var self = this;
        this.exprs.forEach(function (e) { self.ys[e].push(null); });
      }
      this._put(msg, this.xs.length - 1);
      var cut = 0, start = msg.time - w.span;
      while (cut < this.xs.length && this.xs[cut] < start) { cut++; }
      if (cut) {
        this.xs.splice(0, cut);
        var me = this;
        this.exprs.forEach(function (e) { me.ys[e].splice(0, cut); });
      }
    }
    this.draw();
  };

  SeriesPanels.prototype._put = function (msg, k) {
    var self = this;
    this.exprs.forEach(function (e) {
      var v = self.opts.live(msg, e);
      if (v !== undefined) { self.ys[e][k] = num(v); }
    });
    this.applyMask(k);
  };

  SeriesPanels.prototype.series = function (expr) {
    if (this.derived[expr]) {
      var out = [], f = this.derived[expr];
      for (var i = 0; i < this.xs.length; i++) { out.push(f(this.ys, i)); }
      return out;
    }
    return this.ys[expr] || [];
  };

  SeriesPanels.prototype.draw = function () {
    var self = this;
    Object.keys(this.charts).forEach(function (expr) {
      var c = self.charts[expr], ys = self.series(expr);
      c.setData([self.xs.slice(), ys]);
      var latest = null;
      for (var i = ys.length - 1; i >= 0 && i >= ys.length - 5; i--) { if (ys[i] !== null) { latest = ys[i]; break; } }
      if (c.valueEl) {
        Minard.text(c.valueEl, latest !== null ? c.fmt(latest) : "no data");
        c.valueEl.classList.toggle("nodata", latest === null);
      }
    });
  };

  Minard.SeriesPanels = SeriesPanels;
}());
