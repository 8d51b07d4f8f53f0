/* minard.js: what every page of the main site shares.
 *
 *  Minard.url(path)        a URL relative to the site root (works under /monitoring/)
 *  Minard.getJSON(path)    fetch JSON; rejects with the server's {"error"} reason
 *  Minard.el(tag, cls, text)  build an element; text goes in as textContent, never HTML
 *  Minard.stream.on(fn)    every /stream message (one per second, shared connection)
 *  Minard.timeRange        the time-range control, kept in the URL (buttons and keys:
 *                          Z or − zoom out, ← → half a window earlier/later, L live)
 *  Minard.params           the page's other choices, kept in the URL
 *  Minard.pause            pause/resume live updates (button and key P); whenLive(fn)
 *  Minard.chart(...)       a uPlot time-series chart in the site's style (shared
 *                          crosshair, value read-out, >= 3 labelled y ticks, "no data")
 *  Minard.histogram(...)   a histogram (bars) in the same style
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

  /* The dispatcher link is down: dispatch-push's mark for the second says so (link_up
     false), or, where it marks nothing (link_up null), the dispatcher key is gone. Then
     no event can arrive: the rates are unknown (the server answers null), not zero. */
  function linkDown(msg) {
    if (msg.error) { return false; }
    return msg.link_up === false || ((msg.link_up === null || msg.link_up === undefined) && msg.dispatcher === null);
  }

  /* this web server reads a Redis replica (--redis-replica) that lags its primary */
  function replicaText(msg) {
    var r = msg.replica;
    if (!r || !r.behind) { return null; }
    if (r.lag === null || r.lag === undefined) {
      return "REPLICA NOT CONFIRMED — this server reads a Redis replica whose freshness is unknown" +
        (r.link === "down" ? " (its link to the primary is down)" : "") + ".";
    }
    return "REPLICA BEHIND — this server reads a Redis replica " + fmtAge(r.lag) +
      " behind its primary" + (r.link === "down" ? " (its link to the primary is down)" : "") +
      ": values shown are that old.";
  }

  function staleText(msg) {
    var s = msg.stale || {}, down = linkDown(msg);
    if (!s.stale && !down) { return replicaText(msg); }
    var parts = [];
    if (down) { parts.push("dispatcher not connected — event rates unknown (no data, not zero)"); }
    if (s.stale) { parts.push(s.reason || "no recent data"); }
    var text = (s.stale ? "STALE DATA — " : "NO EVENT DATA — ") + parts.join("; ");
    if (s.severe) { return text + ". Values shown are the last received, not current."; }
    if (down) { return text + "."; }
    // the pull workers are alive and the link is up: what they count now is really nothing
    return text + ". The dispatcher is connected and the pull workers are running: rates of 0 are real (no events arrive).";
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
    if (reload && !paused) { setTimeout(function () { timeRange._changed(); }, 0); } // (paused: on resume)
    last = msg;
    lastAt = Date.now();
    liveState.className = "live-state " + (paused ? "paused" : "ok");
    setText(liveState, paused ? "paused" : "live");
    showBanner(staleText(msg), (msg.stale && msg.stale.severe) || linkDown(msg) ||
               !!(msg.replica && msg.replica.behind));
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

  /* Minard.stream.on(fn): fn(msg) for every message, not while the page is paused */
  var stream = {
    on: function (fn) {
      listeners.push(function (msg) { if (!paused) { fn(msg); } });
      if (last && !paused) { fn(last); }
    },
    last: function () { return last; }
  };

  /* -- unacknowledged alarms of level >= 40: a badge on the Alarms link of every page -- */
  /* A shifter watching the Stream page sees that an alarm came. Alarms come from
   * get_alarm (once) and then /stream. Acknowledgements are the server's, the same on
   * every screen: alarm_acks is polled every ACK_POLL_MS (the server answers just its
   * version while nothing changed), ack_alarm stores them. The Alarms page uses them
   * through window.MinardAlarmAcks:
   *   .get(id) -> {by, time} or undefined    .on(fn) fn() whenever they change
   *   .post(ids, name) -> Promise of the server's answer (rejects with its reason)
   *   .refresh() -> ask the server now */
  var DANGER = 40, ALARM_LIFE_MS = 86400 * 1000, ACK_POLL_MS = 2000;
  var dangerAlarms = {}; // alarm id -> time (ms)
  var alarmLink = document.querySelector('.nav a[href$="alarms"]');
  var alarmBadge = null;
  var alarmAcks = (function () {
    var acks = {}, version = null, busy = false, fns = [], again = false;
    try { window.localStorage.removeItem("minard.alarms.acked"); } catch (e) { /* none */ }
    function changed() { fns.forEach(function (fn) { fn(); }); }
    function refresh() {
      if (busy) { again = true; return Promise.resolve(); }
      busy = true;
      return getJSON("alarm_acks" + (version === null ? "" : "?version=" + version)).then(function (r) {
        busy = false;
        var fresh = !!r.acks;
        if (fresh) { acks = r.acks; }
        version = typeof r.version === "number" ? r.version : null;
        if (fresh) { changed(); }
        if (again) { again = false; refresh(); }
      }, function () { busy = false; again = false; });
    }
    function post(ids, name) {
      return fetch(url("ack_alarm"), {
        method: "POST", cache: "no-store", credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: name, ids: ids })
      }).then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (!r.ok) { throw new Error(j.error || ("HTTP " + r.status)); }
          (j.acknowledged || []).forEach(function (id) { acks[String(id)] = { by: j.by, time: j.time }; });
          version = null; // read the whole record again (acks of others in between)
          changed();
          refresh();
          return j;
        });
      });
    }
    return {
      get: function (id) { return acks[String(id)]; },
      on: function (fn) { fns.push(fn); },
      post: post,
      refresh: refresh
    };
  }());
  window.MinardAlarmAcks = alarmAcks;
  function showAlarmBadge() {
    if (!alarmLink) { return; }
    var now = serverNow() * 1000;
    var open = Object.keys(dangerAlarms).filter(function (id) {
      return !alarmAcks.get(id) && now - dangerAlarms[id] < ALARM_LIFE_MS;
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
  var newestAlarm = null, catchingUp = false; // the newest alarm id this page has read
  function noteAlarms(alarms, latest) {
    (alarms || []).forEach(function (a) {
      var t = a ? Date.parse(a.time) : NaN;
      if (a && Number(a.level) >= DANGER && !isNaN(t)) { dangerAlarms[String(a.id)] = t; }
      if (a && typeof a.id === "number") { newestAlarm = Math.max(newestAlarm === null ? -1 : newestAlarm, a.id); }
    });
    if (typeof latest === "number") { newestAlarm = Math.max(newestAlarm === null ? -1 : newestAlarm, latest); }
    showAlarmBadge();
  }
  /* /stream carries new alarms and the newest id (latest_alarm): alarms it did not carry
   * (more than one message holds, or raised while this page had no stream) are read. */
  function readAlarms(start) {
    catchingUp = true;
    getJSON("get_alarm?start=" + start).then(function (r) {
      catchingUp = false;
      noteAlarms(r.alarms, r.latest);
    }, function () { catchingUp = false; });
  }
  alarmAcks.on(showAlarmBadge);
  if (alarmLink) {
    readAlarms(-100);
    listeners.push(function (msg) {
      if (msg.alarms && msg.alarms.length) { noteAlarms(msg.alarms); }
      var latest = msg.latest_alarm;
      if (typeof latest !== "number" || catchingUp) { return; }
      if (newestAlarm === null) { // the first read failed
        readAlarms(-100);
      } else if (latest < newestAlarm) { // the counter went back (Redis emptied): read again
        dangerAlarms = {};
        newestAlarm = null;
        readAlarms(-100);
      } else if (latest > newestAlarm) {
        readAlarms(newestAlarm + 1);
      }
    });
    alarmAcks.refresh();
    setInterval(alarmAcks.refresh, ACK_POLL_MS); // acknowledged on any screen
    setInterval(showAlarmBadge, 30000); // alarms older than a day leave the count
  }

  /* -- page state in the URL ---------------------------------------------------------- */
  /* Everything a page lets the user choose is in its URL (a reload or a link shows the
   * same): Minard.params.get(name), Minard.params.set({name: value or null}, push). */
  var params = {
    get: function (name) { return new URLSearchParams(location.search).get(name); },
    set: function (values, push) {
      var p = new URLSearchParams(location.search);
      Object.keys(values).forEach(function (k) {
        if (values[k] === null || values[k] === undefined || values[k] === "") { p.delete(k); }
        else { p.set(k, values[k]); }
      });
      var q = p.toString();
      history[push ? "pushState" : "replaceState"](push ? null : history.state, "",
                                                   location.pathname + (q ? "?" + q : ""));
    }
  };

  /* -- pause: live updates stopped until resumed --------------------------------------- */
  /* While paused, /stream listeners (Minard.stream.on) are not called and refreshes
   * scheduled through Minard.pause.whenLive wait; on resume they run once and the time
   * windows are read again. Not kept in the URL: a reloaded wall screen must be live. */
  var paused = false, pausedAt = null, waiting = [];
  var pause = {
    is: function () { return paused; },
    set: function (on) {
      var button = document.getElementById("pause");
      if (!button || paused === !!on) { return; }
      paused = !!on;
      pausedAt = paused ? serverNow() : null;
      body.classList.toggle("paused", paused);
      if (lastAt) {
        liveState.className = "live-state " + (paused ? "paused" : "ok");
        setText(liveState, paused ? "paused" : "live");
      }
      setText(button, paused ? "Resume" : "Pause");
      button.setAttribute("aria-pressed", paused ? "true" : "false");
      button.title = (paused ? "Resume live updates" : "Pause live updates") + " (P)";
      var strip = document.getElementById("paused-banner");
      if (strip) {
        setText(document.getElementById("paused-text"), paused ?
                "LIVE UPDATES PAUSED at " + fmtTime(pausedAt).slice(11) + " UTC — the page shows what it had then." : "");
        strip.hidden = !paused;
      }
      if (!paused) {
        var jobs = waiting;
        waiting = [];
        jobs.forEach(function (job) { job.fn(); });
        if (timeRange._listeners.length) { timeRange._changed(); }
      }
    },
    /* fn now, or (paused) once on resume; a later call with the same key replaces it */
    whenLive: function (fn, key) {
      if (!paused) { fn(); return; }
      key = key || fn;
      waiting = waiting.filter(function (job) { return job.key !== key; });
      waiting.push({ fn: fn, key: key });
    }
  };
  (function () {
    var button = document.getElementById("pause");
    if (!button) { return; }
    button.hidden = false;
    button.addEventListener("click", function () { pause.set(!paused); });
    var resume = document.getElementById("paused-resume");
    if (resume) { resume.addEventListener("click", function () { pause.set(false); }); }
  }());

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

  /* ?range= spellings: a value of the control (15m, 1h, 1d, 1mo ...), or a number and a
   * unit — 24h, 90m, 90 min, 2 hours, 3d, 2w, 6mo, 1y; a bare number is seconds. A range
   * shorter than MIN_SPAN or longer than the control's longest is refused (said, not
   * silently replaced). */
  var MIN_SPAN = 60;
  var UNITS = { s: 1, sec: 1, second: 1, m: 60, min: 60, minute: 60, h: 3600, hr: 3600, hour: 3600,
                d: 86400, day: 86400, w: 604800, wk: 604800, week: 604800,
                mo: 2592000, mon: 2592000, month: 2592000, y: 31536000, yr: 31536000, year: 31536000 };
  function spellingSeconds(text) {
    var m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/.exec(String(text).trim().toLowerCase());
    if (!m) { return null; }
    var unit = m[2] || "s";
    if (!UNITS[unit] && unit.length > 2 && unit.slice(-1) === "s") { unit = unit.slice(0, -1); }
    return UNITS[unit] ? parseFloat(m[1]) * UNITS[unit] : null;
  }
  var SPAN_WORDS = [[31536000, "year"], [86400, "day"], [3600, "hour"], [60, "min"], [1, "s"]];
  function spanText(seconds) { // 7200 -> "2 hours", 5400 -> "90 min"
    for (var i = 0; i < SPAN_WORDS.length; i++) {
      var n = seconds / SPAN_WORDS[i][0];
      if (n >= 1 && Math.abs(n - Math.round(n)) < 1e-9) {
        n = Math.round(n);
        var word = SPAN_WORDS[i][1];
        return n + " " + (n === 1 || word === "min" || word === "s" ? word : word + "s");
      }
    }
    return Math.round(seconds) + " s";
  }

  var timeRange = {
    POINTS: POINTS,
    /* The current window: {start, stop, step, live, span, t0, t1, problem} in unix seconds
       (start/stop on the step grid; t0/t1 as asked; problem: what in the URL was not
       understood, or null). */
    current: function () {
      var p = new URLSearchParams(location.search);
      var now = serverNow(), problem = null;
      if (p.has("start") || p.has("stop")) {
        var start = parseTime(p.get("start")), stop = parseTime(p.get("stop"));
        if (start !== null && stop !== null && stop > start) {
          return this._window(start, stop, false);
        }
        problem = start === null || stop === null ? "cannot read the window start=" + (p.get("start") || "") +
                  " stop=" + (p.get("stop") || "") + " (ISO-8601 or unix seconds)" : "the window ends before it starts";
      }
      var span = null, asked = p.get("range");
      if (asked !== null && asked !== "") {
        span = this.spanOf(asked);
        if (!span && !problem) {
          var secs = spellingSeconds(asked);
          problem = secs === null ? "unknown range “" + asked + "” (e.g. 15m, 24h, 3d, 1w, 1mo, 1y)" :
                    "range “" + asked + "” is outside " + spanText(MIN_SPAN) + " … " + spanText(this.maxSpan());
        }
      }
      span = span || this.defaultSpan();
      var w = this._window(now - span, now, true, span);
      if (problem) { w.problem = problem + ": showing the last " + spanText(w.span) + "."; }
      return w;
    },
    _window: function (start, stop, live, span) {
      span = span || stop - start;
      var t0 = start, t1 = stop;
      var step = Math.max(1, Math.ceil(span / POINTS));
      stop = Math.ceil(stop / step) * step;
      start = stop - Math.ceil(span / step) * step;
      return { start: start, stop: stop, step: step, live: live, span: span, t0: t0, t1: t1, problem: null };
    },
    select: function () { return document.getElementById("tr-range"); },
    _presets: function () {
      var sel = this.select(), out = [];
      for (var i = 0; sel && i < sel.options.length; i++) {
        var secs = parseFloat(sel.options[i].dataset.seconds);
        if (secs && !sel.options[i].dataset.spelled) { out.push([sel.options[i].value, secs]); }
      }
      return out;
    },
    maxSpan: function () {
      return this._presets().reduce(function (a, p) { return Math.max(a, p[1]); }, 0) || 315360000;
    },
    /* seconds of a ?range= spelling, or null when it is not one (or out of bounds) */
    spanOf: function (value) {
      if (value === null || value === undefined || value === "") { return null; }
      var presets = this._presets();
      for (var i = 0; i < presets.length; i++) { if (presets[i][0] === value) { return presets[i][1]; } }
      var secs = spellingSeconds(value);
      return secs !== null && secs >= MIN_SPAN && secs <= this.maxSpan() ? secs : null;
    },
    defaultSpan: function () {
      var presets = this._presets();
      return presets.length ? presets[0][1] : 900;
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
    /* Twice the window around its middle (live: the next longer range of the control). */
    zoomOut: function () {
      var w = this.current(), now = serverNow();
      if (w.live) {
        var next = this._presets().filter(function (p) { return p[1] > w.span * 1.001; })
                                  .sort(function (a, b) { return a[1] - b[1]; })[0];
        if (next) { this.set({ range: next[0] }); }
        return;
      }
      var span = Math.min(w.span * 2, this.maxSpan()), mid = (w.t0 + w.t1) / 2;
      var stop = Math.min(mid + span / 2, now);
      this.zoom(stop - span, stop);
    },
    /* Half a window earlier (dir −1) or later (+1); later than now is live again. */
    shift: function (dir) {
      var w = this.current(), d = w.span / 2 * dir;
      if (dir > 0 && (w.live || w.t1 + d >= serverNow() - 1)) {
        if (!w.live) { this._goLive(); }
        return;
      }
      this.zoom(w.t0 + d, w.t1 + d);
    },
    _goLive: function () {
      var w = this.current(), best = null;
      this._presets().forEach(function (p) {
        if (best === null || Math.abs(p[1] - w.span) < Math.abs(best[1] - w.span)) { best = p; }
      });
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
      var asked = new URLSearchParams(location.search).get("range");
      var abs = document.getElementById("tr-abs"), liveBtn = document.getElementById("tr-live");
      var spelled = sel.querySelector("option[data-spelled]");
      if (spelled) { spelled.remove(); }
      var problem = document.getElementById("tr-problem");
      if (problem) { setText(problem, w.problem || ""); problem.hidden = !w.problem; }
      var later = document.getElementById("tr-later");
      if (later) { later.disabled = w.live; }
      if (w.live) {
        // 24h is the control's "1 day"; 2h, 90m ... get an entry of their own
        var preset = this._presets().filter(function (p) { return p[1] === w.span; })[0];
        if (!preset && asked) { // 2h, 90m ...: shown as such, before "custom…"
          var opt = el("option", null, spanText(w.span));
          opt.value = asked;
          opt.dataset.seconds = String(w.span);
          opt.dataset.spelled = "1";
          sel.insertBefore(opt, sel.querySelector('option[value="custom"]'));
          sel.value = asked;
        } else {
          sel.value = preset[0];
        }
        abs.hidden = true;
        liveBtn.hidden = true;
      } else {
        sel.value = "custom";
        abs.hidden = false;
        liveBtn.hidden = false;
        ["tr-start", "tr-stop"].forEach(function (id, i) {
          var field = document.getElementById(id);
          field.value = isoLocalInput(i ? w.t1 : w.t0);
          field.classList.remove("invalid");
        });
      }
      var yzero = document.getElementById("tr-yzero");
      if (yzero) { yzero.checked = yFromZero(); }
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
        document.getElementById("tr-live").addEventListener("click", function () { pause.set(false); self._goLive(); });
        document.getElementById("tr-out").addEventListener("click", function () { self.zoomOut(); });
        document.getElementById("tr-earlier").addEventListener("click", function () { self.shift(-1); });
        document.getElementById("tr-later").addEventListener("click", function () { self.shift(1); });
        document.getElementById("tr-yzero").addEventListener("change", function (e) {
          params.set({ y: e.target.checked ? "zero" : null }, false);
          rerange();
        });
        window.addEventListener("popstate", function () { self._changed(); rerange(); });
      }
      var w = this.current();
      this._sync(w);
      fn(w);
    }
  };

  /* y axes from zero (?y=zero), for the whole page */
  function yFromZero() { return params.get("y") === "zero"; }

  /* -- keyboard shortcuts (not while typing in a field) ------------------------------- */
  /* Z or −: zoom out · ← / →: half a window earlier / later · L: back to live (and
     resume) · P: pause / resume live updates. */
  function typing(target) {
    if (!target || !target.tagName) { return false; }
    if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") { return true; }
    return target.tagName === "INPUT" && !/^(checkbox|radio|button|submit|reset|range|color)$/i.test(target.type);
  }
  document.addEventListener("keydown", function (e) {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) { return; }
    var hasRange = !!timeRange.select() && timeRange._listeners.length > 0;
    var key = e.key;
    if (hasRange && (key === "z" || key === "Z" || key === "-")) { timeRange.zoomOut(); }
    else if (hasRange && key === "ArrowLeft") { timeRange.shift(-1); }
    else if (hasRange && key === "ArrowRight") { timeRange.shift(1); }
    else if (key === "l" || key === "L") {
      if (!hasRange && !paused) { return; }
      pause.set(false);
      if (hasRange && !timeRange.current().live) { timeRange._goLive(); }
    }
    else if ((key === "p" || key === "P") && document.getElementById("pause")) { pause.set(!paused); }
    else { return; }
    e.preventDefault();
  });

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
    return { stroke: fg, font: font, grid: { stroke: line, width: 1 },
             ticks: { stroke: line, width: 1, size: scaled(4) }, gap: scaled(3),
             space: scaled(50), labelFont: scaled(11) + "px system-ui, sans-serif",
             labelSize: scaled(14), labelGap: 0 };
  }

  /* Time ticks in UTC, 24 h, one line: HH:MM:SS, HH:MM, MM-DD HH:MM or YYYY-MM-DD. */
  function timeAxis() {
    var a = axis();
    a.size = scaled(24);
    a.space = scaled(70);
    a.label = "time (UTC)";
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

  /* y axes. Every chart shows at least MIN_Y_TICKS labelled ticks (a lone "500" told
   * nothing), about one per Y_TICK_PX pixels, on round numbers. Noise is not blown up
   * into swings: an axis spans at least MIN_REL_SPAN of the size of its values (a rate of
   * 1000 Hz ± 1 % is drawn on 900 … 1100, not on 990 … 1010). ?y=zero (the "y from 0"
   * box) puts zero on every y axis of the page. */
  var MIN_Y_TICKS = 3, MIN_REL_SPAN = 0.2, Y_TICK_PX = 36;
  var NICE = [1, 2, 2.5, 5];

  function niceStep(raw) { // the smallest 1, 2, 2.5 or 5 × 10^k that is at least raw
    var e = Math.floor(Math.log10(raw));
    for (var k = e - 1; k <= e + 1; k++) {
      for (var i = 0; i < NICE.length; i++) {
        var s = NICE[i] * Math.pow(10, k);
        if (s >= raw * (1 - 1e-9)) { return s; }
      }
    }
    return Math.pow(10, e + 1);
  }
  function largerStep(step) { return niceStep(step * 1.0001); }
  function roundTo(v, step) { // v on the grid of step, without 0.30000000000000004
    var digits = Math.max(0, 2 - Math.floor(Math.log10(step)));
    return +v.toFixed(Math.min(20, digits));
  }

  /* [min, max, step] of a linear y axis for values from lo to hi drawn on plotPx pixels;
     null when there are no values. zero: the axis includes 0. */
  function yScale(lo, hi, plotPx, zero) {
    if (lo === null || hi === null || lo === undefined || hi === undefined || !isFinite(lo) || !isFinite(hi)) {
      return null;
    }
    var nonNegative = lo >= 0;
    if (zero) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
    var size = Math.max(Math.abs(lo), Math.abs(hi));
    var minSpan = size > 0 ? size * MIN_REL_SPAN : 1;
    if (hi - lo < minSpan) {
      var mid = (lo + hi) / 2;
      lo = mid - minSpan / 2;
      hi = mid + minSpan / 2;
      if (nonNegative && lo < 0) { hi -= lo; lo = 0; }
    }
    var most = Math.max(MIN_Y_TICKS - 1, Math.floor(plotPx / Y_TICK_PX)) + 1; // intervals at most
    var step = niceStep((hi - lo) / (most * 2)), before = null;
    for (var i = 0; i < 40; i++) {
      var a = roundTo(Math.floor(lo / step + 1e-9) * step, step);
      var b = roundTo(Math.ceil(hi / step - 1e-9) * step, step);
      var n = Math.round((b - a) / step);
      if (n <= most) { return n < MIN_Y_TICKS - 1 && before ? before : [a, b, step]; }
      before = [a, b, step];
      step = largerStep(step);
    }
    return before;
  }

  function gridTicks(min, max, step) {
    var out = [];
    if (!step || !isFinite(min) || !isFinite(max)) { return out; }
    for (var v = min; v <= max + step * 1e-6 && out.length < 100; v = roundTo(v + step, step)) { out.push(v); }
    return out;
  }

  /* Tick labels with one prefix and as many decimals as the step needs: 0.9k 1.0k 1.1k,
     28 30 32, 1.2e-3 1.4e-3. */
  function tickLabels(ticks, step) {
    var size = ticks.reduce(function (m, v) { return Math.max(m, Math.abs(v)); }, 0);
    if (!size || !step) { return ticks.map(function (v) { return v === 0 ? "0" : fmtSI(v); }); }
    var div = 1, suffix = "";
    for (var i = 0; i < SI.length; i++) {
      if (size >= SI[i][0]) { div = SI[i][0]; suffix = SI[i][1]; break; }
    }
    if (size < 0.01) {
      var e = Math.floor(Math.log10(size));
      div = Math.pow(10, e);
      suffix = "e" + e;
    }
    var s = step / div, digits = Math.max(0, Math.ceil(-Math.log10(s) - 1e-9));
    if (Math.abs(s * Math.pow(10, digits) - Math.round(s * Math.pow(10, digits))) > 1e-6) { digits += 1; }
    return ticks.map(function (v) { return Math.abs(v) < step * 1e-6 ? "0" : (v / div).toFixed(digits) + suffix; });
  }

  /* The time-series charts of the page (Minard.charts): they share one crosshair
     (uPlot cursor.sync), and redraw when the y-from-zero choice changes. */
  var SYNC_KEY = "minard-time";
  var registry = [];
  function rerange() {
    registry.forEach(function (c) { if (c.plot.data && c.plot.data[0].length) { c.plot.setData(c.plot.data); } });
  }
  function pruneDetached() { // charts whose panel was replaced (DAQ crate → card) leave the crosshair
    for (var i = registry.length - 1; i >= 0; i--) {
      if (!document.body.contains(registry[i].plot.root)) {
        if (registry[i].resize) { registry[i].resize.disconnect(); }
        registry[i].plot.destroy();
        registry.splice(i, 1);
      }
    }
  }

  /* A y-axis title that fits beside the plot: "occupancy (hits/event)" on a small panel
     becomes "hits/event" (the unit), which says more than a cut-off word. */
  function fitTitle(u, title) {
    title = title || "";
    var room = u.over.clientHeight, m = /^(.*\S)\s*\(([^()]+)\)$/.exec(title);
    if (!room || !m) { return title; }
    measure.font = scaled(11) + "px system-ui, sans-serif"; // the axes' labelFont
    return measure.measureText(title).width <= room ? title : m[2];
  }
  var measure = document.createElement("canvas").getContext("2d");

  /* -- run boundaries on every time chart ------------------------------------------ */
  /* A vertical line at each run start inside a chart's x range, labelled with the run
   * number. The runs are read once for the page (not per chart) from /get_runs?start=&stop=
   * over the union of the charts' x ranges (and RUNS_AHEAD s more, so a live window that
   * moves needs no new read for that long: at most one read per RUNS_AHEAD s), and again
   * when a chart shows a range outside what was read. No runs, or the route failing:
   * nothing is drawn. Each chart's root says what it drew: data-run-boundaries="N N". */
  var RUNS_AHEAD = 20, RUNS_RETRY_MS = 30000;
  var runBounds = { runs: [], from: null, to: null, busy: false, failedAt: 0, want: null, timer: null };
  function runsWanted(min, max) {
    if (!isFinite(min) || !isFinite(max) || max <= min) { return; }
    var rb = runBounds;
    if (rb.from !== null && min >= rb.from && max <= rb.to) { return; }
    rb.want = rb.want ? [Math.min(rb.want[0], min), Math.max(rb.want[1], max)] : [min, max];
    if (rb.timer || rb.busy) { return; }
    if (rb.failedAt && Date.now() - rb.failedAt < RUNS_RETRY_MS) { return; }
    rb.timer = setTimeout(readRuns, 50); // every chart of the page asks first: one read
  }
  function readRuns() {
    var rb = runBounds, w = rb.want;
    rb.timer = null;
    rb.want = null;
    if (!w) { return; }
    var from = Math.floor(w[0]), to = Math.ceil(w[1]) + RUNS_AHEAD;
    rb.busy = true;
    getJSON("get_runs?" + query({ start: from, stop: to, limit: 500 })).then(function (r) {
      rb.runs = (r && r.runs || []).filter(function (run) {
        return run && typeof run.start === "number" && isFinite(run.start);
      }).map(function (run) { return { run: run.run, start: run.start }; });
      rb.from = from;
      rb.to = to;
      rb.failedAt = 0;
    }, function () {
      rb.runs = [];
      rb.from = null;
      rb.failedAt = Date.now();
    }).then(function () {
      rb.busy = false;
      registry.forEach(function (c) { try { c.plot.redraw(false, false); } catch (e) { /* gone */ } });
    });
  }
  function drawRunBounds(u) {
    var min = u.scales.x.min, max = u.scales.x.max, drawn = [];
    if (min === null || max === null || min === undefined || !u.data[0].length) {
      u.root.dataset.runBoundaries = "";
      return;
    }
    runsWanted(min, max);
    var ctx = u.ctx, top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
    var color = cssVar("--run-line") || "#b083f0", px = window.devicePixelRatio || 1;
    ctx.save();
    ctx.font = scaled(10) * px + "px system-ui, sans-serif";
    ctx.textBaseline = "top";
    ctx.textAlign = "left"; // (the axes leave it "right" or "center")
    var rows = [], rowPx = scaled(12) * px; // labels of runs close together: one row down
    runBounds.runs.slice().sort(function (a, b) { return a.start - b.start; }).forEach(function (run) {
      if (run.start < min || run.start > max) { return; }
      var x = Math.round(u.valToPos(run.start, "x", true)) + 0.5;
      ctx.strokeStyle = color;
      ctx.lineWidth = px;
      ctx.setLineDash([4 * px, 3 * px]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, bottom);
      ctx.stroke();
      var text = "run " + run.run, width = ctx.measureText(text).width, pad = 2 * px;
      var right = x + pad + width + pad > u.bbox.left + u.bbox.width; // near the right edge
      var tx = right ? x - pad - width : x + pad, row = 0;
      while (rows[row] && rows[row].some(function (b) { return tx < b[1] + pad && tx + width > b[0] - pad; })) { row++; }
      (rows[row] = rows[row] || []).push([tx, tx + width]);
      var ty = top + pad + row * rowPx;
      ctx.fillStyle = cssVar("--panel") || "#171e26";
      ctx.globalAlpha = 0.8;
      ctx.fillRect(tx - 1 * px, ty, width + 2 * px, scaled(11) * px);
      ctx.globalAlpha = 1;
      ctx.fillStyle = color;
      ctx.fillText(text, tx, ty);
      drawn.push(run.run);
    });
    ctx.restore();
    u.root.dataset.runBoundaries = drawn.join(" ");
  }

  function latest(ys) {
    for (var i = (ys || []).length - 1; i >= 0; i--) { if (ys[i] !== null && ys[i] !== undefined) { return ys[i]; } }
    return null;
  }

  function clockText(t, span) {
    var iso = new Date(t * 1000).toISOString();
    return (span > 86400 ? iso.slice(0, 10) + " " : "") + iso.slice(11, 19) + " UTC";
  }

  function overlay(plot, cls, text) {
    var node = el("div", cls, text);
    node.hidden = true;
    plot.over.appendChild(node);
    return node;
  }

  function followWidth(container, plot, height) {
    if (typeof ResizeObserver === "undefined") { return null; }
    var pending = false;
    var observer = new ResizeObserver(function () {
      if (pending) { return; }
      pending = true;
      requestAnimationFrame(function () {
        pending = false;
        var w = Math.max(200, container.clientWidth);
        if (Math.abs(w - plot.width) > 2) { plot.setSize({ width: w, height: height }); }
      });
    });
    observer.observe(container);
    return observer;
  }

  /* Columns for uPlot: numbers, or null (a gap: never drawn as 0), each as long as xs. */
  function cleanColumns(data) {
    var n = data[0].length, any = false;
    var out = data.map(function (col, i) {
      if (i === 0) { return col; }
      var ys = new Array(n);
      for (var k = 0; k < n; k++) {
        ys[k] = num(col[k]);
        if (ys[k] !== null) { any = true; }
      }
      return ys;
    });
    return { data: out, any: any };
  }

  /* A time-series chart. opts: {series: [{label, color}], height, yLabel (text, or a
     function read at every draw), yFormat(v), yZero (always from 0), fill,
     legend (false: none; charts of several series always have one), onZoom(start, stop),
     onZoomReset(), noData (text)}. Returns {plot, setData([xs, ys...]), yLabels()}.
     Null values are gaps; a chart without any value says "no data". Hovering shows the
     value at the cursor (legend, or a read-out in the corner) on every chart of the page. */
  function chart(container, opts) {
    pruneDetached();
    var yFmt = opts.yFormat || fmtSI;
    var multi = (opts.series || []).length > 1;
    var legend = opts.legend !== false || multi;
    var st = { step: null, nodata: false, labels: [] };
    /* the legend: the values at the cursor; without a cursor, each series' latest value */
    var series = [{ label: "time", value: function (u, v, sidx, idx) {
      if (idx === null || idx === undefined) { return "latest"; }
      return v === null || v === undefined ? "–" : fmtTime(v) + " UTC";
    } }].concat((opts.series || []).map(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      return { label: s.label, stroke: color, width: 1.5, spanGaps: false,
               fill: opts.fill ? color + "22" : undefined,
               points: { show: false },
               value: function (u, v, sidx, idx) {
                 if (idx === null || idx === undefined) { v = latest(u.data[sidx]); }
                 return v === null || v === undefined ? "no data" : yFmt(v);
               } };
    }));
    var height = scaled(opts.height || 120);
    var xAxis = timeAxis();
    var plotPx = height - xAxis.size - xAxis.labelSize - scaled(12);
    var yAxis = axis();
    yAxis.size = scaled(50);
    yAxis.label = typeof opts.yLabel === "function" ? opts.yLabel() : (opts.yLabel || "");
    yAxis.splits = function (u, i, min, max) { return gridTicks(min, max, st.step); };
    yAxis.values = function (u, vals) {
      st.labels = st.nodata ? vals.map(function () { return ""; }) : tickLabels(vals, st.step);
      return st.labels;
    };
    var downHere = false;
    var uopts = {
      width: Math.max(200, container.clientWidth || 400),
      height: height,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      legend: { show: legend, live: true },
      cursor: { drag: { x: !!opts.onZoom, y: false, setScale: false },
                sync: { key: SYNC_KEY, setSeries: false },
                focus: { prox: multi ? scaled(16) : -1 } },
      focus: { alpha: multi ? 0.3 : 1 },
      scales: { x: { time: true },
                y: { range: function (u, lo, hi) {
                  var r = yScale(lo, hi, plotPx, !!opts.yZero || yFromZero());
                  if (!r) { st.step = 0.5; return [0, 1]; }
                  st.step = r[2];
                  return [r[0], r[1]];
                } } },
      axes: [xAxis, yAxis],
      series: series,
      hooks: {
        setSelect: [function (u) {
          if (!opts.onZoom || !downHere || u.select.width < 3) { return; }
          downHere = false; // the crosshair's other charts get this selection too
          var a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, width: 0 }, false);
          opts.onZoom(a, b);
        }],
        setCursor: [function (u) { showReadout(u); }],
        draw: [drawRunBounds],
        drawClear: [function (u) { u.axes[1].label = fitTitle(u, typeof opts.yLabel === "function" ? opts.yLabel() : opts.yLabel); }]
      }
    };
    if (opts.onClick) {
      uopts.hooks.ready = [function (u) { u.over.addEventListener("click", function () { opts.onClick(); }); }];
    }
    var empty = [[]].concat(series.slice(1).map(function () { return []; }));
    var plot = new uPlot(uopts, empty, container);
    plot.over.addEventListener("mousedown", function () { downHere = true; });
    document.addEventListener("mouseup", function () { setTimeout(function () { downHere = false; }, 0); });
    if (opts.onZoomReset) { plot.over.addEventListener("dblclick", function () { opts.onZoomReset(); }); }
    var readout = overlay(plot, "chart-readout");
    var nodata = overlay(plot, "chart-nodata", opts.noData || "no data");

    /* the value at the cursor: "15:20:13 UTC · 1.03k" (several series: the nearest) */
    function showReadout(u) {
      var idx = u.cursor.idx, xs = u.data[0];
      if (legend && !multi) { return; } // the legend shows it
      if (idx === null || idx === undefined || !(u.cursor.left >= 0) || !xs.length) { readout.hidden = true; return; }
      var text;
      if (multi) {
        var best = null;
        for (var i = 1; i < u.series.length; i++) {
          var v = u.data[i][idx];
          if (!u.series[i].show || v === null || v === undefined) { continue; }
          var d = u.cursor.top >= 0 ? Math.abs(u.valToPos(v, "y") - u.cursor.top) : -v;
          if (best === null || d < best[0]) { best = [d, i, v]; }
        }
        text = best ? u.series[best[1]].label + " " + yFmt(best[2]) : "no data";
      } else {
        var y = u.data[1][idx];
        text = y === null || y === undefined ? "no data" : yFmt(y);
      }
      setText(readout, clockText(xs[idx], xs[xs.length - 1] - xs[0]) + " · " + text);
      readout.classList.toggle("left", u.cursor.left > u.over.clientWidth * 0.6);
      readout.hidden = false;
    }

    var handle = {
      plot: plot,
      setData: function (data) {
        var clean = cleanColumns(data);
        st.nodata = !clean.any;
        nodata.hidden = clean.any;
        plot.setData(clean.data);
      },
      yLabels: function () { return st.labels.slice(); },
      hasData: function () { return !st.nodata; }
    };
    handle.resize = followWidth(container, plot, height);
    registry.push(handle);
    return handle;
  }

  /* Histogram of values (equal bins) as uPlot bars; log=true for a log y axis.
     opts: {label (what is counted: the y title), xLabel, xFormat, color, height, log}. */
  function histogram(container, opts) {
    var color = opts.color || PALETTE[0];
    var height = scaled(opts.height || 160);
    var yTitle = opts.yLabel || opts.label || "count";
    var xFmt = opts.xFormat || fmtSI;
    var st = { step: null, nodata: true, edges: [], labels: [] };
    var xAxis = axis();
    xAxis.size = scaled(24);
    xAxis.label = opts.xLabel || "";
    xAxis.values = function (u, vals) { // one prefix and precision for all: 950 1.00k → 0.95k 1.00k
      if (st.nodata) { return vals.map(function () { return ""; }); }
      if (xFmt !== fmtSI || vals.length < 2) { return vals.map(function (v) { return xFmt(v); }); }
      return tickLabels(vals, Math.abs(vals[1] - vals[0]));
    };
    var plotPx = height - xAxis.size - xAxis.labelSize - scaled(12);
    var yAxis = axis();
    yAxis.size = scaled(50);
    yAxis.label = yTitle;
    var yScaleOpts;
    if (opts.log) {
      /* whole decades, at least two of them: three labelled ticks */
      yScaleOpts = { distr: 3, log: 10, range: function (u, lo, hi) {
        if (!(lo > 0) || !(hi > 0)) { return [1, 100]; }
        var a = Math.pow(10, Math.floor(Math.log10(lo) + 1e-9)), b = Math.pow(10, Math.ceil(Math.log10(hi) - 1e-9));
        while (b / a < 99) { if (a >= 10) { a /= 10; } else { b *= 10; } }
        return [a, b];
      } };
      yAxis.splits = function (u, i, min, max) {
        var out = [];
        for (var e = Math.round(Math.log10(min)); e <= Math.round(Math.log10(max)); e++) { out.push(Math.pow(10, e)); }
        return out;
      };
      yAxis.filter = function (u, splits) { return splits; }; // every decade gets its label
      yAxis.values = function (u, vals) {
        st.labels = vals.map(function (v) { return st.nodata || v === null ? "" : tickLabels([v], v)[0]; });
        return st.labels;
      };
    } else {
      yScaleOpts = { range: function (u, lo, hi) {
        var r = yScale(0, hi > 0 ? hi : 1, plotPx, true);
        st.step = r[2];
        return [r[0], r[1]];
      } };
      yAxis.splits = function (u, i, min, max) { return gridTicks(min, max, st.step); };
      yAxis.values = function (u, vals) {
        st.labels = st.nodata ? vals.map(function () { return ""; }) : tickLabels(vals, st.step);
        return st.labels;
      };
    }
    var plot = new uPlot({
      width: Math.max(200, container.clientWidth || 400),
      height: height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      scales: { x: { time: false, range: function (u, lo, hi) { // the last bin is a whole bar
        var e = st.edges;
        if (!e.length) { return [0, 1]; }
        return [e[0], e[e.length - 1] + (e.length > 1 ? e[1] - e[0] : 1)];
      } }, y: yScaleOpts },
      axes: [xAxis, yAxis],
      series: [{}, { label: yTitle, stroke: color, fill: color + "99", width: 1,
                     paths: uPlot.paths.bars({ size: [1, Infinity], align: 1 }), points: { show: false } }],
      hooks: { setCursor: [function (u) { showReadout(u); }] }
    }, [[], []], container);
    var readout = overlay(plot, "chart-readout");
    var nodata = overlay(plot, "chart-nodata", opts.noData || "no data");
    function showReadout(u) {
      var idx = u.cursor.idx, edges = st.edges;
      if (idx === null || idx === undefined || !(u.cursor.left >= 0) || !edges.length) { readout.hidden = true; return; }
      var width = edges.length > 1 ? edges[1] - edges[0] : 1, a = edges[idx];
      var bin = width === 1 && a === Math.round(a) ? xFmt(a) : xFmt(a) + " – " + xFmt(a + width);
      var count = u.data[1][idx];
      setText(readout, (xAxis.label ? xAxis.label + " " : "") + bin + " · " +
              (count === null ? "0" : fmtSI(count)) + " " + yTitle);
      readout.classList.toggle("left", u.cursor.left > u.over.clientWidth * 0.6);
      readout.hidden = false;
    }
    var handle = {
      plot: plot,
      /* edges: bin left edges; counts: per bin (0 allowed; log axes show 0 as a gap).
         No bins at all: "no data" (or opts.noData, or text), not an empty axis of zeros. */
      setBins: function (edges, counts, text) {
        st.edges = edges.slice();
        st.nodata = !edges.length;
        setText(nodata, text || opts.noData || "no data");
        nodata.hidden = !st.nodata;
        var ys = counts.map(function (c) { return opts.log && !(c > 0) ? null : c; });
        plot.setData([edges, ys]);
      },
      setValues: function (values, nbins, text) {
        var b = binValues(values, nbins || 50);
        this.setBins(b.edges, b.counts, text);
        return b;
      },
      yLabels: function () { return st.labels.slice(); },
      hasData: function () { return !st.nodata; }
    };
    handle.resize = followWidth(container, plot, height);
    histograms.push(handle);
    return handle;
  }
  var histograms = []; // Minard.histograms: those of the page

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

  /* The y-axis title of a /metric expression: "rate (Hz)", "mean nhit" ... */
  function yTitle(expr) {
    var RAW = { gtid: "gtid", "L2:gtid": "gtid", run: "run", "L2:run": "run", subrun: "subrun",
                heartbeat: "heartbeat", "l2-heartbeat": "L2 heartbeat" };
    if (RAW[expr]) { return RAW[expr]; }
    if (/-nhit$/.test(expr)) { return "mean nhit"; }
    if (/-charge$/.test(expr)) { return "charge (ADC)"; }
    if (/-Baseline$/.test(expr)) { return "baseline"; }
    return "rate (Hz)";
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
    params: params,
    pause: pause,
    yFromZero: yFromZero,
    yTitle: yTitle,
    chart: chart,
    charts: registry,
    histogram: histogram,
    histograms: histograms,
    binValues: binValues,
    ramp: ramp,
    PALETTE: PALETTE,
    nowSeconds: serverNow
  };

  openStream();
}());
