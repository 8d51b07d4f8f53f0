/* health_marks.js: the channels, cards and crates the health service flags (its open
 * findings, get_health), outlined on crate maps (CrateMap.outline) and counted in any
 * element with a data-health-flags attribute (a legend's "N flagged").
 *
 *   Minard.healthMarks.attach(map)   outline this map's flagged channels, kept current
 *
 * Polls every POLL_MS once a map is attached; a failed poll keeps the last outlines.
 */
(function () {
  "use strict";

  var POLL_MS = 15000;
  var KINDS = { dead: "dead", hot: "hot", noisy: "noisy", base: "base current out of range" };
  var maps = [], marks = [], started = false;

  function toMarks(open) {
    return open.map(function (f) {
      var kind = f.kind === "dark" ? f.level + " dark" : (KINDS[f.kind] || f.kind);
      return { crate: f.crate, card: f.level === "crate" ? null : f.card,
               channel: f.level === "channel" ? f.channel : null,
               text: kind + " since " + Minard.fmtTime(f.since).slice(11, 16) + " UTC" };
    });
  }

  function show(count) {
    Array.prototype.forEach.call(document.querySelectorAll("[data-health-flags]"), function (e) {
      Minard.text(e, count === null ? "flagged (Channel health)" : count + " flagged (Channel health)");
    });
  }

  function load() {
    Minard.getJSON("get_health?closed=0").then(function (r) {
      marks = toMarks(r.open || []);
      maps.forEach(function (m) { m.outline(marks); });
      show(marks.length);
    }, function () { /* keep the last outlines; the page says why its own data fail */ })
      .then(function () { setTimeout(load, POLL_MS); });
  }

  /* a map whose canvases left the page (the DAQ page builds a new crate map per view) */
  function onPage(map) {
    return Object.keys(map.canvases).some(function (c) { return map.canvases[c].isConnected; });
  }

  Minard.healthMarks = {
    attach: function (map) {
      maps = maps.filter(onPage);
      maps.push(map);
      map.outline(marks);
      if (!started) { started = true; load(); }
    },
    marks: function () { return marks; }
  };
}());
