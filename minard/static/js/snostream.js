/* Stream (home page): trigger rates, mean nhit/charge, run/subrun/gtid, heartbeat. */
(function () {
  "use strict";

  var MEANS = { "TOTAL-nhit": ["nhit", "TOTAL"], "TOTAL-charge": ["charge", "TOTAL"],
                "PULGT-nhit": ["nhit", "PULGT"], "PULGT-charge": ["charge", "PULGT"] };
  var NOT_RATES = ["run", "subrun", "gtid", "heartbeat"].concat(Object.keys(MEANS));

  /* msg: a /stream message, or its `previous` (the second before, read again: rates and
     means only, so everything else is left as it is: undefined). */
  function live(msg, expr) {
    if (msg.error) { return null; }
    if (expr === "heartbeat") {
      if (msg.last_heartbeat === undefined) { return undefined; }
      return msg.last_heartbeat === msg.time ? 1 : null;
    }
    if (expr === "run" || expr === "subrun" || expr === "gtid") { return msg[expr]; }
    if (MEANS[expr]) { var m = MEANS[expr]; return msg[m[0]] ? msg[m[0]][m[1]] : null; }
    return msg.rates ? msg.rates[expr] : undefined;
  }

  /* A rate of 0 in a bucket without any pull-worker heartbeat is "no data", not zero.
     A bucket with events is data even when its heartbeat key is gone (Redis evicts
     expiring keys when it is full). */
  function mask(ys, from) {
    var beat = ys.heartbeat || [], total = ys.TOTAL || [], out = {}, m = [];
    for (var i = from; i < beat.length; i++) { m.push(beat[i] === null && !(total[i] > 0)); }
    Object.keys(ys).forEach(function (e) { if (NOT_RATES.indexOf(e) < 0) { out[e] = m; } });
    return out;
  }

  var panels = new Minard.SeriesPanels({ live: live, mask: mask, extraExprs: ["heartbeat"] });

  /* EXT2–EXT8 shown or not: ?ext=1 in the URL (a reload or a link keeps it) */
  var toggle = document.getElementById("toggle-ext");
  function showExt(show) {
    toggle.setAttribute("aria-pressed", show ? "true" : "false");
    Minard.text(toggle, (show ? "hide" : "show") + " EXT2–EXT8");
    Array.prototype.forEach.call(document.querySelectorAll(".ext-trigger"), function (p) { p.hidden = !show; });
    panels.draw();
  }
  toggle.addEventListener("click", function () {
    var show = toggle.getAttribute("aria-pressed") !== "true";
    Minard.params.set({ ext: show ? "1" : null }, false);
    showExt(show);
  });
  showExt(Minard.params.get("ext") === "1");
  window.addEventListener("popstate", function () { showExt(Minard.params.get("ext") === "1"); });

  function fact(id, value, bad) {
    var el = document.getElementById(id);
    Minard.text(el, value === null || value === undefined ? "–" : value);
    el.parentNode.classList.toggle("bad", !!bad);
  }

  Minard.stream.on(function (msg) {
    if (msg.error) { fact("v-rate", "no data", true); return; }
    var total = msg.rates ? msg.rates.TOTAL : null;
    fact("v-rate", total === null ? "no data" : Minard.fmtSI(total), total === null);
    ["run", "subrun", "gtid"].forEach(function (name) {
      var el = document.getElementById("v-" + name);
      if (msg[name] !== null && msg[name] !== undefined) {
        fact("v-" + name, msg[name]);
        el.classList.remove("old");
        el.title = "";
        return;
      }
      // no events this second: the last value the charts have, marked as old
      var ys = panels.ys[name] || [];
      for (var i = ys.length - 1; i >= 0; i--) {
        if (ys[i] !== null) {
          fact("v-" + name, ys[i]);
          el.classList.add("old");
          el.title = "last seen " + Minard.fmtTime(panels.xs[i]) + " UTC";
          return;
        }
      }
    });
    fact("v-dispatcher", msg.dispatcher || "not connected", !msg.dispatcher);
    var age = msg.stale ? msg.stale.heartbeat_age : null;
    fact("v-heartbeat", age === null ? "none" : (age <= 2 ? "alive" : Minard.fmtAge(age) + " ago"),
         age === null || age > 10);
  });
}());
