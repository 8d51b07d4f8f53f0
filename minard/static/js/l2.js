/* L2: rates, lag and the L2 file queues. */
(function () {
  "use strict";
  function lag(ys, i) {
    var gtid = ys.gtid ? ys.gtid[i] : null, l2 = ys["L2:gtid"] ? ys["L2:gtid"][i] : null;
    var rate = ys.TOTAL ? ys.TOTAL[i] : null;
    if (gtid === null || l2 === null || !rate) { return null; }
    var d = gtid - l2;
    if (d < -(1 << 23)) { d += 1 << 24; } // gtid wraps at 2^24
    return d / rate;
  }
  /* TOTAL without a pull-worker heartbeat or events is no data, not zero (as on Stream) */
  function mask(ys, from) {
    var beat = ys.heartbeat || [], total = ys.TOTAL || [], m = [];
    for (var i = from; i < beat.length; i++) { m.push(beat[i] === null && !(total[i] > 0)); }
    return { TOTAL: m };
  }
  new Minard.SeriesPanels({
    derived: { lag: lag },
    mask: mask,
    extraExprs: ["gtid", "heartbeat"]
    // no `live`: L1, L2 ... are not in /stream, so the window is re-read every 5 s
  });

  var MAX_ROWS = 50;
  function refreshTables() {
    var bodies = document.querySelectorAll("tbody[data-state]");
    var jobs = Array.prototype.map.call(bodies, function (tbody) {
      var state = tbody.dataset.state;
      return Minard.getJSON("get_l2?name=" + encodeURIComponent(state)).then(function (answer) {
        tbody.textContent = "";
        var now = Minard.nowSeconds();
        var n = answer.files.length;
        Minard.text(document.getElementById("l2-count-" + state), n + (n === 1 ? " file" : " files"));
        for (var i = n - 1; i >= Math.max(0, n - MAX_ROWS); i--) {
          var tr = Minard.el("tr");
          tr.appendChild(Minard.el("td", "mono", answer.files[i]));
          var t = answer.times[i];
          tr.appendChild(Minard.el("td", "num", t === null ? "?" : Minard.fmtAge(now - t)));
          tbody.appendChild(tr);
        }
        if (!n) {
          var empty = Minard.el("tr");
          var td = Minard.el("td", "nodata", "none");
          td.colSpan = 2;
          empty.appendChild(td);
          tbody.appendChild(empty);
        }
      });
    });
    Promise.all(jobs).then(function () {
      Minard.text(document.getElementById("l2-updated"), "updated " + new Date().toISOString().slice(11, 19) + " UTC");
    }).catch(function (err) {
      Minard.text(document.getElementById("l2-updated"), "cannot load: " + err.message);
    }).then(function () { setTimeout(function () { Minard.pause.whenLive(refreshTables); }, 20000); });
  }
  refreshTables();
}());
