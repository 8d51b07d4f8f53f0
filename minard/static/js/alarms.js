/* Alarms page: live, newest first, coloured by level, audible, acknowledged for everyone.
 *
 * Loads get_alarm?start=-1000 (every alarm of the last 24 h, up to MAX_ROWS), then polls
 * get_alarm?start=<latest+1> every second.
 * Acknowledging is the server's record, the same on every screen: the shifter types a
 * name once (remembered by this browser), "Acknowledge" posts ack_alarm, and every screen
 * (this one included) learns who acknowledged which alarm when from alarm_acks, polled
 * by minard.js (window.MinardAlarmAcks), and shows it in the row.
 * An unacknowledged alarm of level >= 40 that arrived while the page is open (or is
 * younger than RING_RECENT_S) rings a two-tone beep made with the Web Audio API every
 * RING_EVERY_MS until it is acknowledged (on any screen) or the sound is muted. Mute is
 * this screen's alone (localStorage) and lasts MUTE_FOR_MS: a muted wall screen must not
 * stay silent into the next shift. Text goes in with textContent only.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;
  var MAX_ROWS = 1000;
  var RING_EVERY_MS = 2500;
  var RING_RECENT_S = 300;
  var DANGER = 40;
  var MUTE_KEY = "minard.alarms.muted-until";
  var NAME_KEY = "minard.alarms.name";
  var MUTE_FOR_MS = 3600 * 1000;
  var NAMES = { 10: "DEBUG", 20: "INFO", 21: "SUCCESS", 30: "WARNING", 40: "DANGER",
                50: "CRITICAL" };

  var tbody = document.getElementById("alarms");
  if (!tbody) { return; }
  var acks = window.MinardAlarmAcks;
  var muteButton = document.getElementById("mute");
  var ackAllButton = document.getElementById("ack-all");
  var nameInput = document.getElementById("ack-name");
  var ackState = document.getElementById("ack-state");
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
      ? "Sound muted on this screen until " + new Date(mutedUntil).toISOString().slice(11, 16) +
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

  /* -- who acknowledges ------------------------------------------------------------- */
  if (nameInput) {
    nameInput.value = load(NAME_KEY, "") || "";
    nameInput.addEventListener("input", function () {
      save(NAME_KEY, nameInput.value.trim());
      nameInput.classList.remove("invalid");
      say("");
    });
  }
  function say(text, bad) {
    Minard.text(ackState, text);
    if (ackState) { ackState.className = "hint" + (bad ? " bad-text" : ""); }
  }
  function ackerName() {
    var name = nameInput ? nameInput.value.trim() : "";
    if (!name && nameInput) {
      nameInput.classList.add("invalid");
      nameInput.focus();
      say("Type your name first: every screen shows who acknowledged.", true);
    }
    return name;
  }

  /* -- rows ------------------------------------------------------------------------- */
  var byId = {};      // alarm id -> {alarm, row, live}
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
  /* The acknowledgement's time: the clock time, with the date when it is not today. */
  function ackTime(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return String(iso); }
    var text = d.toISOString(), today = new Date(Minard.nowSeconds() * 1000).toISOString();
    return (text.slice(0, 10) === today.slice(0, 10) ? "" : text.slice(0, 10) + " ") +
      text.slice(11, 19) + " UTC";
  }
  function ageSeconds(a) {
    var t = Date.parse(a.time);
    return isNaN(t) ? Infinity : Minard.nowSeconds() - t / 1000;
  }
  function isAcked(id) { return !!(acks && acks.get(id)); }

  function acknowledge(ids, button) {
    var name = ackerName();
    if (!name || !ids.length || !acks) { return; }
    if (button) { button.disabled = true; }
    say("acknowledging…");
    acks.post(ids, name).then(function (r) {
      var n = (r.acknowledged || []).length, before = (r.already || []).length;
      say(n ? "acknowledged " + n + " alarm" + (n === 1 ? "" : "s") + " as " + r.by +
              (before ? " (" + before + " already acknowledged by someone else)" : "")
            : "already acknowledged by someone else");
    }, function (err) {
      if (button) { button.disabled = false; }
      say("not acknowledged: " + err.message, true);
    });
  }

  /* The acknowledgement cell: a button, or who acknowledged and when. */
  function showAck(entry) {
    var id = entry.alarm.id, record = acks ? acks.get(id) : undefined;
    var cell = entry.row.querySelector("td.ack");
    var state = record ? "by:" + record.by + "@" + record.time : "open";
    if (cell.dataset.state === state) { return; }
    cell.dataset.state = state;
    cell.textContent = "";
    entry.row.classList.toggle("acked", !!record);
    if (record) {
      var who = Minard.el("span", "acked-by");
      who.appendChild(Minard.el("span", "ack-mark", "✓ "));
      who.appendChild(Minard.el("span", "ack-name", record.by));
      who.appendChild(Minard.el("span", "ack-time", " · " + ackTime(record.time)));
      who.title = "acknowledged by " + record.by + " at " + formatTime(record.time) + " UTC";
      cell.appendChild(who);
      return;
    }
    var button = Minard.el("button", "ack-button", "Acknowledge");
    button.type = "button";
    button.addEventListener("click", function () { acknowledge([id], button); });
    cell.appendChild(button);
  }

  function makeRow(a) {
    var level = Number(a.level);
    var lc = levelClass(level);
    var tr = Minard.el("tr", "alarm level-row-" + lc);
    tr.dataset.id = String(a.id);
    tr.dataset.level = String(level);
    tr.appendChild(Minard.el("td", "time", formatTime(a.time)));
    var lvl = Minard.el("td", "lvl");
    lvl.appendChild(Minard.el("span", "level level-" + lc, levelName(level)));
    tr.appendChild(lvl);
    tr.appendChild(Minard.el("td", "msg", a.message === undefined ? "" : String(a.message)));
    tr.appendChild(Minard.el("td", "ack"));
    return tr;
  }

  /* alarms: ascending ids; live: arrived after the first load */
  function add(alarms, live) {
    alarms.forEach(function (a) {
      if (!a || typeof a.id !== "number") { return; }
      var id = String(a.id);
      if (byId[id]) { return; }
      var row = makeRow(a);
      if (live) { row.classList.add("new"); }
      tbody.insertBefore(row, tbody.firstChild); // newest first
      byId[id] = { alarm: a, row: row, live: live };
      showAck(byId[id]);
    });
    while (tbody.rows.length > MAX_ROWS) {
      var last = tbody.rows[tbody.rows.length - 1];
      delete byId[last.dataset.id];
      tbody.removeChild(last);
    }
  }

  function ringing() {
    return Object.keys(byId).filter(function (id) {
      var e = byId[id];
      return !isAcked(id) && Number(e.alarm.level) >= DANGER &&
             (e.live || ageSeconds(e.alarm) < RING_RECENT_S);
    });
  }

  function refresh() {
    var total = tbody.rows.length;
    var ids = Object.keys(byId);
    var open = ids.filter(function (id) {
      return !isAcked(id) && Number(byId[id].alarm.level) >= DANGER;
    }).length;
    Minard.text(countNode, (total >= MAX_ROWS ? "the newest " + total + " alarms" :
                            total + " alarm" + (total === 1 ? "" : "s") + " in the last 24 h") +
                (open ? " · " + open + " unacknowledged at level ≥ 40" : ""));
    if (countNode) { countNode.className = "hint" + (open ? " bad-text" : ""); }
    document.title = (open ? "(" + open + ") " : "") + baseTitle;
    if (ackAllButton) { ackAllButton.disabled = !ids.some(function (id) { return !isAcked(id); }); }
  }

  function showAcks() {
    Object.keys(byId).forEach(function (id) { showAck(byId[id]); });
    refresh();
  }
  if (acks) { acks.on(showAcks); }

  if (ackAllButton) {
    ackAllButton.addEventListener("click", function () {
      var ids = Object.keys(byId).filter(function (id) { return !isAcked(id); })
        .map(Number).sort(function (a, b) { return a - b; });
      acknowledge(ids, null);
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
        byId = {};
        latest = null;
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
  window.MinardAlarms = { ringing: ringing, acknowledge: acknowledge, isMuted: isMuted,
                          loadedAt: loadedAt };
}());
