/* minard.js: what every page of the main site shares.
 *
 *  Minard.url(path)        a URL relative to the site root (works under /monitoring/)
 *  Minard.getJSON(path)    fetch JSON; rejects with the server's {"error"} reason
 *  Minard.el(tag, cls, text)  build an element; text goes in as textContent, never HTML
 *  Minard.stream.on(fn)    every /stream message (one per second, shared connection)
 *  Minard.timeRange        the time-range control, kept in the URL
 *  Minard.chart(...)       a uPlot time-series chart in the site's style
 *  Minard.fmt*             number formatting
 *
 * The stale banner lives here: it is shown on every page when the pull workers' heartbeat
 * or the events stop (reported by /stream), or when this page loses the server.
 */
(function () {
  "use strict";

  var body = document.body;
  var root = body.dataset.root || "";

  function url(path) { return root + path; }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function setText(node, value) {
    if (node) { node.textContent = value === undefined || value === null ? "" : String(value); }
  }

  function getJSON(path) {
    return fetch(url(path), { cache: "no-store", credentials: "same-origin" }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) { throw new Error(j.error || ("HTTP " + r.status)); }
        return j;
      });
    });
  }

  function query(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== "") {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
      }
    });
    return parts.join("&");
  }

  /* -- number formatting ------------------------------------------------------------ */
  var SI = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  function fmtSI(v, digits) {
    if (v === null || v === undefined || isNaN(v)) { return "–"; }
    var a = Math.abs(v);
    for (var i = 0; i < SI.length; i++) {
      if (a >= SI[i][0] * 0.9995) { return (v / SI[i][0]).toPrecision(digits || 3) + SI[i][1]; }
    }
    if (a === 0) { return "0"; }
    if (a >= 100) { return v.toFixed(0); }
    if (a >= 0.01) { return String(+v.toPrecision(digits || 3)); }
    return v.toExponential(1);
  }
  function fmtInt(v) {
    if (v === null || v === undefined || isNaN(v)) { return "–"; }
    return String(Math.round(v));
  }
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) { return "never"; }
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 120) { return seconds + " s"; }
    if (seconds < 7200) { return Math.round(seconds / 60) + " min"; }
    if (seconds < 172800) { return Math.round(seconds / 3600) + " h"; }
    return Math.round(seconds / 86400) + " days";
  }
  function fmtTime(unix) {
    return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19);
  }

  /* -- the server's clock ------------------------------------------------------------ */
  /* Every /stream message carries server_time. A control-room PC whose clock is off put
   * every chart's times off by as much (history was shifted by the `now` parameter onto
   * the browser's clock) and wrote the live points of /stream (server seconds) into the
   * wrong places. The site therefore runs on the server's clock: serverNow(). */
  var skew = 0; // s, server − browser
  function serverNow() { return Date.now() / 1000 + skew; }

  /* -- the clock (UTC, as the data) -------------------------------------------------- */
  var clock = document.getElementById("clock");
  function tick() { setText(clock, new Date(serverNow() * 1000).toISOString().slice(11, 19) + " UTC"); }
  tick();
  setInterval(tick, 1000);

  /* -- the shared /stream connection and the stale banner ---------------------------- */
  var banner = document.getElementById("stale-banner");
  var liveState = document.getElementById("live-state");
  var listeners = [];
  var last = null;
  var lastAt = 0;
  var source = null;
  var LOST_AFTER = 5000; // ms without a message: the server (or the network) is gone

  function showBanner(text, severe) {
    if (!banner) { return; }
    if (!text) { banner.hidden = true; return; }
    setText(banner, text);
    banner.classList.toggle("bad", !!severe);
    banner.hidden = false;
  }

  function staleText(msg) {
    var s = msg.stale || {};
    if (!s.stale) { return null; }
    var text = "STALE DATA — " + (s.reason || "no recent data");
    if (!msg.error && msg.dispatcher === null) { text += "; dispatcher not connected"; }
    if (s.severe) { return text + ". Values shown are the last received, not current."; }
    // the pull workers are alive: what they count now is really nothing
    return text + ". The pull workers are running: rates of 0 are real (no events arrive).";
  }

  function onMessage(e) {
    var msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    var reload = lastAt && Date.now() - lastAt > LOST_AFTER; // back after an outage
    if (typeof msg.server_time === "number" && isFinite(msg.server_time)) {
      var newSkew = msg.server_time - Date.now() / 1000;
      // the first message, or the browser's clock was set: windows were on the wrong clock
      var jumped = Math.abs(newSkew - skew) > 2;
      reload = reload || jumped;
      skew = newSkew;
      if (jumped) { tick(); }
    }
    if (reload) { setTimeout(function () { timeRange._changed(); }, 0); }
    last = msg;
    lastAt = Date.now();
    liveState.className = "live-state ok";
    setText(liveState, "live");
    showBanner(staleText(msg), msg.stale && msg.stale.severe);
    listeners.forEach(function (fn) {
      try { fn(msg); } catch (err) { console.warn("stream listener failed:", err); }
    });
  }

  /* EventSource retries by itself after a network error, but gives up for good after an
   * HTTP error: nginx answers 502 while the web process restarts, and a wall screen
   * stayed "disconnected" until someone reloaded it. Then we open a new one, backing off. */
  var REOPEN_MIN_MS = 2000, REOPEN_MAX_MS = 30000, reopenDelay = REOPEN_MIN_MS, reopenTimer = null;
  function openStream() {
    if (source || typeof EventSource === "undefined") { return; }
    source = new EventSource(url("stream"));
    source.onmessage = function (e) { reopenDelay = REOPEN_MIN_MS; onMessage(e); };
    source.onerror = function () {
      liveState.className = "live-state bad";
      setText(liveState, "reconnecting…");
      if (source && source.readyState === EventSource.CLOSED && !reopenTimer) {
        source.close();
        source = null;
        reopenTimer = setTimeout(function () { reopenTimer = null; openStream(); }, reopenDelay);
        reopenDelay = Math.min(REOPEN_MAX_MS, reopenDelay * 2);
      }
    };
  }

  setInterval(function () {
    body.classList.toggle("offline", !!lastAt && Date.now() - lastAt > LOST_AFTER);
    if (lastAt && Date.now() - lastAt > LOST_AFTER) {
      showBanner("NO CONNECTION to the monitoring server for " +
                 fmtAge((Date.now() - lastAt) / 1000) + " — the page is not updating.", true);
      liveState.className = "live-state bad";
      setText(liveState, "disconnected");
    } else if (!lastAt && Date.now() - startedAt > LOST_AFTER) {
      showBanner("NO CONNECTION to the monitoring server — the page is not updating.", true);
    }
  }, 1000);
  var startedAt = Date.now();

  var stream = {
    on: function (fn) { listeners.push(fn); if (last) { fn(last); } },
    last: function () { return last; }
  };

  /* -- unacknowledged alarms of level >= 40: a badge on the Alarms link of every page -- */
  /* A shifter watching the Stream page sees that an alarm came. Alarms come from
   * get_alarm (once) and then /stream; acknowledgements are those of the Alarms page
   * (alarms.js keeps them in localStorage as "id@time"). */
  var ALARM_ACK_KEY = "minard.alarms.acked", DANGER = 40, ALARM_LIFE_MS = 86400 * 1000;
  var dangerAlarms = {}; // "id@time" -> time (ms)
  var alarmLink = document.querySelector('.nav a[href$="alarms"]');
  var alarmBadge = null;
  function ackedAlarms() {
    try {
      var v = JSON.parse(window.localStorage.getItem(ALARM_ACK_KEY));
      return Array.isArray(v) ? v : [];
    } catch (e) { return []; }
  }
  function showAlarmBadge() {
    if (!alarmLink) { return; }
    var acked = {}, now = serverNow() * 1000;
    ackedAlarms().forEach(function (k) { acked[k] = true; });
    var open = Object.keys(dangerAlarms).filter(function (k) {
      return !acked[k] && now - dangerAlarms[k] < ALARM_LIFE_MS;
    }).length;
    if (!alarmBadge) {
      alarmBadge = el("span", "alarm-badge");
      alarmBadge.id = "alarm-badge";
      alarmLink.appendChild(alarmBadge);
    }
    setText(alarmBadge, open || "");
    alarmBadge.hidden = !open;
    alarmLink.title = open ? open + " unacknowledged alarm" + (open === 1 ? "" : "s") + " of level ≥ 40" : "";
  }
  function noteAlarms(alarms) {
    (alarms || []).forEach(function (a) {
      var t = a ? Date.parse(a.time) : NaN;
      if (a && Number(a.level) >= DANGER && !isNaN(t)) { dangerAlarms[a.id + "@" + a.time] = t; }
    });
    showAlarmBadge();
  }
  if (alarmLink) {
    getJSON("get_alarm?start=-100").then(function (r) { noteAlarms(r.alarms); }, function () {});
    listeners.push(function (msg) { if (msg.alarms && msg.alarms.length) { noteAlarms(msg.alarms); } });
    setInterval(showAlarmBadge, 2000); // acknowledged on the Alarms page (here or in another tab)
  }

  /* -- time range (kept in the URL) -------------------------------------------------- */
  var POINTS = 900; // points per chart; the server allows at most 10000

  /* Unix seconds, or an ISO-8601 time ("2016-04-18 12:00:00", "...T12:00:00.000Z");
     without a zone it is UTC, as everything on the site. */
  function parseTime(text) {
    if (text === null || text === undefined) { return null; }
    text = String(text).trim();
    if (text === "") { return null; }
    if (/^-?\d+(\.\d+)?$/.test(text)) { return parseFloat(text); }
    var m = /^(\d{4}-\d\d-\d\d)(?:[T ](\d\d:\d\d(?::\d\d(?:\.\d+)?)?))?\s*([zZ]|[+-]\d\d:?\d\d)?$/.exec(text);
    if (!m) { return null; }
    var zone = m[3] ? (m[3] === "z" ? "Z" : m[3]) : "Z";
    if (zone.length === 5) { zone = zone.slice(0, 3) + ":" + zone.slice(3); }
    var t = Date.parse(m[1] + "T" + (m[2] || "00:00:00") + zone);
    return isNaN(t) ? null : t / 1000;
  }

  function isoLocalInput(unix) { // the value of the from/to fields: UTC, 24 hours
    return new Date(unix * 1000).toISOString().slice(0, 19).replace("T", " ");
  }

  var timeRange = {
    POINTS: POINTS,
    /* The current window: {start, stop, step, live, span} in unix seconds. */
    current: function () {
      var p = new URLSearchParams(location.search);
      var start = parseTime(p.get("start")), stop = parseTime(p.get("stop"));
      var now = serverNow();
      if (start !== null && stop !== null && stop > start) {
        return this._window(start, stop, false);
      }
      var span = this.spanOf(p.get("range")) || this.defaultSpan();
      return this._window(now - span, now, true);
    },
    _window: function (start, stop, live) {
      var span = stop - start;
      var step = Math.max(1, Math.ceil(span / POINTS));
      stop = Math.ceil(stop / step) * step;
      start = stop - Math.ceil(span / step) * step;
      return { start: start, stop: stop, step: step, live: live, span: span };
    },
    select: function () { return document.getElementById("tr-range"); },
    spanOf: function (value) {
      var sel = this.select();
      if (!sel || !value) { return null; }
      for (var i = 0; i < sel.options.length; i++) {
        if (sel.options[i].value === value) { return parseFloat(sel.options[i].dataset.seconds) || null; }
      }
      return null;
    },
    defaultSpan: function () {
      var sel = this.select();
      return sel && sel.options.length ? parseFloat(sel.options[0].dataset.seconds) : 900;
    },
    /* Put a window in the URL and tell the page. */
    set: function (params, state) {
      var p = new URLSearchParams(location.search);
      ["range", "start", "stop"].forEach(function (k) { p.delete(k); });
      Object.keys(params).forEach(function (k) { if (params[k] !== null) { p.set(k, params[k]); } });
      history.pushState(state || null, "", "?" + p.toString());
      this._changed();
    },
    zoom: function (start, stop) {
      this.set({ start: new Date(start * 1000).toISOString(), stop: new Date(stop * 1000).toISOString() },
               { minardZoom: true });
    },
    /* Double-click on a chart: undo a zoom made here; otherwise back to a live window.
       (history.back() alone left the page when nothing had been zoomed.) */
    reset: function () {
      if (history.state && history.state.minardZoom) { history.back(); return; }
      if (!this.current().live) { this._goLive(); }
    },
    _goLive: function () {
      var sel = this.select(), w = this.current(), best = null;
      for (var i = 0; sel && i < sel.options.length; i++) {
        var secs = parseFloat(sel.options[i].dataset.seconds);
        if (secs && (best === null || Math.abs(secs - w.span) < Math.abs(best[1] - w.span))) {
          best = [sel.options[i].value, secs];
        }
      }
      this.set({ range: best ? best[0] : null });
    },
    _listeners: [],
    _changed: function () {
      var w = this.current();
      this._sync(w);
      this._listeners.forEach(function (fn) { fn(w); });
    },
    _sync: function (w) {
      var sel = this.select();
      if (!sel) { return; }
      var p = new URLSearchParams(location.search);
      var abs = document.getElementById("tr-abs"), liveBtn = document.getElementById("tr-live");
      if (w.live) {
        sel.value = this.spanOf(p.get("range")) ? p.get("range") : sel.options[0].value;
        abs.hidden = true;
        liveBtn.hidden = true;
      } else {
        sel.value = "custom";
        abs.hidden = false;
        liveBtn.hidden = false;
        ["tr-start", "tr-stop"].forEach(function (id, i) {
          var field = document.getElementById(id);
          field.value = isoLocalInput(i ? w.stop : w.start);
          field.classList.remove("invalid");
        });
      }
    },
    /* Set up the control and call fn(window) now and on every change. */
    init: function (fn) {
      var self = this;
      this._listeners.push(fn);
      var sel = this.select();
      if (sel && !sel.dataset.ready) {
        sel.dataset.ready = "1";
        sel.addEventListener("change", function () {
          if (sel.value === "custom") {
            var w = self.current();
            self.set({ start: new Date(w.start * 1000).toISOString(), stop: new Date(w.stop * 1000).toISOString() });
          } else {
            self.set({ range: sel.value });
          }
        });
        document.getElementById("timerange").addEventListener("submit", function (e) {
          e.preventDefault();
          var startField = document.getElementById("tr-start"), stopField = document.getElementById("tr-stop");
          var s = parseTime(startField.value);
          var t = parseTime(stopField.value);
          startField.classList.toggle("invalid", s === null);
          stopField.classList.toggle("invalid", t === null || (s !== null && t <= s));
          if (s !== null && t !== null && t > s) { self.zoom(s, t); }
        });
        document.getElementById("tr-live").addEventListener("click", function () { self._goLive(); });
        window.addEventListener("popstate", function () { self._changed(); });
      }
      var w = this.current();
      this._sync(w);
      fn(w);
    }
  };

  /* A value from JSON (number or numeric string) as a finite number, else null. */
  function num(v) {
    if (v === null || v === undefined) { return null; }
    var x = typeof v === "number" ? v : parseFloat(v);
    return isFinite(x) ? x : null;
  }

  /* -- which points of a series are not final yet ------------------------------------ */
  /* /metric reads, per point, the bucket of the largest interval I (1, 2, 4 ... 65536 s)
   * <= step that holds the point's time. A rate of a bucket that has not ended, or whose
   * second was not flushed by every pull worker yet, is too low: the last point of every
   * live chart dipped. Rates are counts / I; means (X-nhit, X-charge) and raw values (gtid,
   * run ...) of a partial bucket are fine. */
  var FLUSH_MARGIN = 1.5; // s after a second ends until every pull worker has flushed it
  var RAW_EXPRS = ["gtid", "run", "subrun", "heartbeat", "l2-heartbeat", "L2:gtid", "L2:run"];
  function intervalFor(step) {
    var i = 1;
    while (i * 2 <= step && i < 65536) { i *= 2; }
    return i;
  }
  function isRate(expr) {
    return RAW_EXPRS.indexOf(expr) < 0 && !/-(nhit|charge|Baseline)$/.test(expr);
  }
  /* Fix the rate points of ys (at times xs, window step) whose bucket is not final: the
     server divided the count by the whole interval; divide by the seconds the bucket has
     been filled instead. Under PARTIAL_MIN s filled (where one second more or less than
     the estimate is more than a few per cent) the point is left out: no data yet. */
  var PARTIAL_MIN = 16;
  function dropPartial(xs, ys, step, now) {
    var interval = intervalFor(step), filled = now - FLUSH_MARGIN;
    for (var i = xs.length - 1; i >= 0; i--) {
      var begin = Math.floor(xs[i] / interval) * interval;
      if (begin + interval <= filled) { break; }
      var seconds = filled - begin;
      ys[i] = seconds >= PARTIAL_MIN && ys[i] !== null ? ys[i] * interval / seconds : null;
    }
    return ys;
  }

  /* -- charts (uPlot) ---------------------------------------------------------------- */
  var PALETTE = ["#4fb3ff", "#f2a93b", "#5cd17a", "#e5534b", "#b083f0", "#39c5bb", "#e6cc4c", "#f778ba"];

  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  /* Charts scale with the root font size (which grows with the viewport: wall screens). */
  function remPx() { return parseFloat(getComputedStyle(document.documentElement).fontSize) || 16; }
  function scaled(px) { return Math.round(px * remPx() / 16); }

  function axis() {
    var fg = cssVar("--muted") || "#8a98a8", line = cssVar("--line") || "#2c3845";
    var font = scaled(12) + "px system-ui, sans-serif";
    return { stroke: fg, font: font, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 },
             space: scaled(50) };
  }

  /* Time ticks in UTC, 24 h, one line: HH:MM:SS, HH:MM, MM-DD HH:MM or YYYY-MM-DD. */
  function timeAxis() {
    var a = axis();
    a.size = scaled(30);
    a.space = scaled(70);
    a.values = function (u, ticks, axisIdx, space, incr) {
      return ticks.map(function (t) {
        var iso = new Date(t * 1000).toISOString();
        if (incr < 60) { return iso.slice(11, 19); }
        if (incr < 3600 * 6) { return iso.slice(11, 16); }
        if (incr < 86400) { return iso.slice(5, 10) + " " + iso.slice(11, 16); }
        return iso.slice(0, 10);
      });
    };
    return a;
  }

  /* A time-series chart. opts: {series: [{label, color}], height, onZoom(start, stop),
     yFormat(v), fill}. Returns {plot, setData(xs, ys...)}. Null values are gaps. */
  function chart(container, opts) {
    var series = [{}].concat((opts.series || []).map(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      return { label: s.label, stroke: color, width: 1.5, spanGaps: false,
               fill: opts.fill ? color + "22" : undefined,
               points: { show: false },
               value: function (u, v, sidx, idx) {
                 if (idx === null || idx === undefined) { return "–"; }
                 return v === null || v === undefined ? "no data" : (opts.yFormat || fmtSI)(v);
               } };
    }));
    var yAxis = axis();
    yAxis.size = scaled(62);
    yAxis.space = scaled(28); // small panels: at least two labelled ticks (only "0" showed)
    yAxis.values = function (u, vals) { return vals.map(function (v) { return (opts.yAxisFormat || fmtSI)(v); }); };
    var height = scaled(opts.height || 120);
    var uopts = {
      width: Math.max(200, container.clientWidth || 400),
      height: height,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      legend: { show: opts.legend !== false, live: true },
      cursor: { drag: { x: !!opts.onZoom, y: false, setScale: false } },
      scales: { x: { time: true }, y: opts.yRange ? { range: opts.yRange } : { auto: true } },
      axes: [timeAxis(), yAxis],
      series: series,
      hooks: {
        setSelect: [function (u) {
          if (!opts.onZoom || u.select.width < 3) { return; }
          var a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, width: 0 }, false);
          opts.onZoom(a, b);
        }]
      }
    };
    if (opts.onClick) {
      uopts.hooks.ready = [function (u) { u.over.addEventListener("click", function () { opts.onClick(); }); }];
    }
    var empty = [[]].concat(series.slice(1).map(function () { return []; }));
    var plot = new uPlot(uopts, empty, container);
    if (opts.onZoomReset) { plot.over.addEventListener("dblclick", function () { opts.onZoomReset(); }); }
    if (typeof ResizeObserver !== "undefined") {
      var pending = false;
      new ResizeObserver(function () {
        if (pending) { return; }
        pending = true;
        requestAnimationFrame(function () {
          pending = false;
          var w = Math.max(200, container.clientWidth);
          if (Math.abs(w - plot.width) > 2) { plot.setSize({ width: w, height: height }); }
        });
      }).observe(container);
    }
    return {
      plot: plot,
      setData: function (data) { plot.setData(data); }
    };
  }

  /* Histogram of values (equal bins) as uPlot bars; log=true for a log y axis. */
  function histogram(container, opts) {
    var color = opts.color || PALETTE[0];
    var height = scaled(opts.height || 160);
    var yAxis = axis();
    yAxis.size = scaled(55);
    yAxis.values = function (u, vals) { return vals.map(function (v) { return fmtSI(v); }); };
    var xAxis = axis();
    xAxis.values = function (u, vals) { return vals.map(function (v) { return (opts.xFormat || fmtSI)(v); }); };
    var plot = new uPlot({
      width: Math.max(200, container.clientWidth || 400),
      height: height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false }, y: opts.log ? { distr: 3, log: 10 } : { auto: true, range: function (u, min, max) { return [0, Math.max(1, max * 1.05)]; } } },
      axes: [xAxis, yAxis],
      series: [{}, { label: opts.label || "count", stroke: color, fill: color + "99", width: 1,
                     paths: uPlot.paths.bars({ size: [1, Infinity], align: 1 }), points: { show: false } }]
    }, [[], []], container);
    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(function () {
        var w = Math.max(200, container.clientWidth);
        if (Math.abs(w - plot.width) > 2) { plot.setSize({ width: w, height: height }); }
      }).observe(container);
    }
    return {
      plot: plot,
      /* edges: bin left edges; counts: per bin (0 allowed; log axes show 0 as a gap) */
      setBins: function (edges, counts) {
        var ys = counts.map(function (c) { return opts.log && !(c > 0) ? null : c; });
        plot.setData([edges, ys]);
      },
      setValues: function (values, nbins) {
        var b = binValues(values, nbins || 50);
        this.setBins(b.edges, b.counts);
        return b;
      }
    };
  }

  function binValues(values, nbins) {
    var xs = values.filter(function (v) { return v !== null && v !== undefined && isFinite(v); });
    if (!xs.length) { return { edges: [], counts: [], n: 0 }; }
    var lo = Math.min.apply(null, xs), hi = Math.max.apply(null, xs);
    var integers = xs.every(function (v) { return v === Math.round(v); });
    if (integers && hi - lo + 1 <= nbins) { // whole numbers: one bin per value
      nbins = hi - lo + 1;
      hi = lo + nbins;
    } else if (hi === lo) { hi = lo + 1; }
    var width = (hi - lo) / nbins, edges = [], counts = [];
    for (var i = 0; i < nbins; i++) { edges.push(lo + i * width); counts.push(0); }
    xs.forEach(function (v) { counts[Math.min(nbins - 1, Math.floor((v - lo) / width))] += 1; });
    return { edges: edges, counts: counts, n: xs.length };
  }

  /* -- colour scales for the crate maps ----------------------------------------------- */
  /* viridis-like ramp, t in [0, 1] */
  var RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function ramp(t) {
    t = Math.max(0, Math.min(1, t));
    var x = t * (RAMP.length - 1), i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
    var a = RAMP[i], b = RAMP[i + 1];
    return "rgb(" + Math.round(a[0] + f * (b[0] - a[0])) + "," + Math.round(a[1] + f * (b[1] - a[1])) +
           "," + Math.round(a[2] + f * (b[2] - a[2])) + ")";
  }

  window.Minard = {
    root: root,
    url: url,
    el: el,
    text: setText,
    getJSON: getJSON,
    query: query,
    fmtSI: fmtSI,
    fmtInt: fmtInt,
    fmtAge: fmtAge,
    fmtTime: fmtTime,
    parseTime: parseTime,
    num: num,
    intervalFor: intervalFor,
    isRate: isRate,
    dropPartial: dropPartial,
    stream: stream,
    timeRange: timeRange,
    chart: chart,
    histogram: histogram,
    binValues: binValues,
    ramp: ramp,
    PALETTE: PALETTE,
    nowSeconds: serverNow
  };

  openStream();
}());
