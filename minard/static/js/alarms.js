/* Alarms page: live, newest first, coloured by level, audible, acknowledgeable.
 *
 * Loads get_alarm?start=-1000 (every alarm of the last 24 h, up to MAX_ROWS), then polls
 * get_alarm?start=<latest+1> every second.
 * An unacknowledged alarm of level >= 40 that arrived while the page is open (or is
 * younger than RING_RECENT_S) rings a two-tone beep made with the Web Audio API every
 * RING_EVERY_MS until it is acknowledged or the sound is muted. Mute lasts MUTE_FOR_MS
 * (a muted wall screen must not stay silent into the next shift); it and the
 * acknowledged alarms are kept in localStorage (per browser). Text goes in with
 * textContent only.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;
  var MAX_ROWS = 1000;
  var RING_EVERY_MS = 2500;
  var RING_RECENT_S = 300;
  var DANGER = 40;
  var ACK_KEY = "minard.alarms.acked";
  var MUTE_KEY = "minard.alarms.muted-until";
  var MUTE_FOR_MS = 3600 * 1000;
  var NAMES = { 10: "DEBUG", 20: "INFO", 21: "SUCCESS", 30: "WARNING", 40: "DANGER",
                50: "CRITICAL" };

  var tbody = document.getElementById("alarms");
  if (!tbody) { return; }
  var muteButton = document.getElementById("mute");
  var ackAllButton = document.getElementById("ack-all");
  var countNode = document.getElementById("alarm-count");
  var soundNote = document.getElementById("sound-note");
  var stateNode = document.getElementById("alarm-state");
  var baseTitle = document.title;

  /* -- localStorage, which may be unavailable (private mode, quota) -------------------- */
  function load(key, fallback) {
    try {
      var v = window.localStorage.getItem(key);
      return v === null ? fallback : JSON.parse(v);
    } catch (e) { return fallback; }
  }
  function save(key, value) {
    try { window.localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* ignore */ }
  }

  /* An alarm's identity: id and time (ids restart if Redis is ever flushed). */
  function alarmKey(a) { return a.id + "@" + a.time; }
  var acked = {};
  (load(ACK_KEY, []) || []).forEach(function (k) { acked[k] = true; });
  function saveAcked() {
    // keep only what is still shown (alarms live 24 h): the list cannot grow forever
    var keep = Object.keys(acked).filter(function (k) { return byKey[k]; });
    save(ACK_KEY, keep);
  }

  /* -- sound ------------------------------------------------------------------------ */
  var mutedUntil = Number(load(MUTE_KEY, 0)) || 0;
  function isMuted() { return mutedUntil > Date.now(); }
  var audio = null;
  function audioContext() {
    if (!audio) {
      var Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) { return null; }
      audio = new Ctx();
    }
    return audio;
  }
  function beep() {
    var ctx = audioContext();
    if (!ctx) { return; }
    if (ctx.state === "suspended") { // autoplay policy: needs a click on the page first
      if (soundNote) { soundNote.hidden = false; }
      ctx.resume();
      return;
    }
    var t = ctx.currentTime;
    [[880, 0], [660, 0.18], [880, 0.36], [660, 0.54]].forEach(function (tone) {
      var osc = ctx.createOscillator();
      var gain = ctx.createGain();
      osc.type = "square";
      osc.frequency.value = tone[0];
      gain.gain.setValueAtTime(0.0001, t + tone[1]);
      gain.gain.exponentialRampToValueAtTime(0.15, t + tone[1] + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + tone[1] + 0.16);
      osc.connect(gain);
      gain.connect(ctx.destination);
      osc.start(t + tone[1]);
      osc.stop(t + tone[1] + 0.17);
    });
  }
  function unlockAudio() {
    var ctx = audio;
    if (ctx && ctx.state === "suspended") { ctx.resume(); }
    if (soundNote) { soundNote.hidden = true; }
  }
  document.addEventListener("click", unlockAudio);
  document.addEventListener("keydown", unlockAudio);

  function showMute() {
    if (!muteButton) { return; }
    var muted = isMuted();
    muteButton.setAttribute("aria-pressed", muted ? "true" : "false");
    Minard.text(muteButton, muted
      ? "Sound muted until " + new Date(mutedUntil).toISOString().slice(11, 16) +
        " UTC (click to unmute)"
      : "Mute sound for 1 hour");
  }
  if (muteButton) {
    muteButton.addEventListener("click", function () {
      mutedUntil = isMuted() ? 0 : Date.now() + MUTE_FOR_MS;
      save(MUTE_KEY, mutedUntil);
      showMute();
    });
  }
  showMute();
  setInterval(showMute, 30000);  // the button says so when the mute has run out

  /* -- rows ------------------------------------------------------------------------- */
  var byKey = {};     // alarm key -> {alarm, row, live}
  var latest = null;  // the newest id seen
  var loadedAt = Date.now() / 1000;

  function levelName(level) {
    if (NAMES[level]) { return NAMES[level]; }
    if (level >= 50) { return "CRITICAL"; }
    return "LEVEL " + level;
  }
  function levelClass(level) {
    if (level >= 40) { return "danger"; }
    if (level >= 30) { return "warning"; }
    if (level === 21) { return "success"; }
    if (level >= 20) { return "info"; }
    return "debug";
  }
  function formatTime(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return String(iso); }
    return d.toISOString().replace("T", " ").slice(0, 19);
  }
  function ageSeconds(a) {
    var t = Date.parse(a.time);
    return isNaN(t) ? Infinity : Minard.nowSeconds() - t / 1000;
  }

  function ack(key) {
    var entry = byKey[key];
    if (!entry) { return; }
    acked[key] = true;
    entry.row.classList.add("acked");
    saveAcked();
    refresh();
  }

  function makeRow(a) {
    var level = Number(a.level);
    var lc = levelClass(level);
    var tr = Minard.el("tr", "alarm level-row-" + lc);
    var key = alarmKey(a);
    tr.dataset.key = key;
    tr.dataset.level = String(level);
    tr.appendChild(Minard.el("td", "time", formatTime(a.time)));
    var lvl = Minard.el("td", "lvl");
    lvl.appendChild(Minard.el("span", "level level-" + lc, levelName(level)));
    tr.appendChild(lvl);
    tr.appendChild(Minard.el("td", "msg", a.message === undefined ? "" : String(a.message)));
    var cell = Minard.el("td", "ack");
    var button = Minard.el("button", "ack-button", "Acknowledge");
    button.type = "button";
    button.addEventListener("click", function () { ack(key); });
    cell.appendChild(button);
    tr.appendChild(cell);
    if (acked[key]) { tr.classList.add("acked"); }
    return tr;
  }

  /* alarms: ascending ids; live: arrived after the first load */
  function add(alarms, live) {
    alarms.forEach(function (a) {
      if (!a || a.id === undefined) { return; }
      var key = alarmKey(a);
      if (byKey[key]) { return; }
      var row = makeRow(a);
      if (live) { row.classList.add("new"); }
      tbody.insertBefore(row, tbody.firstChild); // newest first
      byKey[key] = { alarm: a, row: row, live: live };
    });
    while (tbody.rows.length > MAX_ROWS) {
      var last = tbody.rows[tbody.rows.length - 1];
      delete byKey[last.dataset.key];
      tbody.removeChild(last);
    }
  }

  function ringing() {
    return Object.keys(byKey).filter(function (k) {
      var e = byKey[k];
      return !acked[k] && Number(e.alarm.level) >= DANGER &&
             (e.live || ageSeconds(e.alarm) < RING_RECENT_S);
    });
  }

  function refresh() {
    var total = tbody.rows.length;
    var open = Object.keys(byKey).filter(function (k) {
      return !acked[k] && Number(byKey[k].alarm.level) >= DANGER;
    }).length;
    Minard.text(countNode, (total >= MAX_ROWS ? "the newest " + total + " alarms" :
                            total + " alarm" + (total === 1 ? "" : "s") + " in the last 24 h") +
                (open ? " · " + open + " unacknowledged at level ≥ 40" : ""));
    if (countNode) { countNode.className = "hint" + (open ? " bad-text" : ""); }
    document.title = (open ? "(" + open + ") " : "") + baseTitle;
    if (ackAllButton) { ackAllButton.disabled = !Object.keys(byKey).some(function (k) { return !acked[k]; }); }
  }

  if (ackAllButton) {
    ackAllButton.addEventListener("click", function () {
      Object.keys(byKey).forEach(function (k) {
        acked[k] = true;
        byKey[k].row.classList.add("acked");
      });
      saveAcked();
      refresh();
    });
  }

  /* -- polling ---------------------------------------------------------------------- */
  var busy = false;
  function poll(first) {
    if (busy) { return; }
    busy = true;
    var start = latest === null ? -MAX_ROWS : latest + 1;
    Minard.getJSON("get_alarm?start=" + start).then(function (r) {
      busy = false;
      Minard.text(stateNode, "");
      var alarms = (r.alarms || []).slice().sort(function (a, b) { return a.id - b.id; });
      var newest = typeof r.latest === "number" ? r.latest : -1;
      if (latest !== null && newest < latest) { // the counter went back: start again
        tbody.textContent = "";
        byKey = {};
        latest = null;
        busy = false;
        poll(true);
        return;
      }
      add(alarms, !first);
      latest = latest === null ? newest : Math.max(latest, newest);
      refresh();
    }, function (err) {
      busy = false;
      Minard.text(stateNode, "cannot read alarms (" + err.message + "); retrying…");
    });
  }

  setInterval(function () {
    if (!isMuted() && ringing().length) { beep(); }
  }, RING_EVERY_MS);

  poll(true);
  setInterval(function () { poll(false); }, POLL_MS);
  window.MinardAlarms = { ringing: ringing, ack: ack, isMuted: isMuted,
                          loadedAt: loadedAt };
}());
