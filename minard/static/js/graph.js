/* Graph: one /metric series over the chosen window, zoomable, with its histograms (of
   the points that have a value: a gap is not a 0). Re-read every max(step, 5) s while the
   window is live and the page is not paused. */
(function () {
  "use strict";
  var name = document.getElementById("graph").dataset.name;
  /* A trigger rate (or TOTAL) is read with the pull-worker heartbeat and TOTAL: a bucket
     with neither has no data (null, a gap), which is not a rate of zero. */
  var masked = document.getElementById("graph").dataset.masked === "1";
  var exprs = masked ? [name].concat(["heartbeat", "TOTAL"].filter(function (e) { return e !== name; })) : [name];
  var isRaw = ["gtid", "run", "subrun", "heartbeat", "l2-heartbeat", "L2:gtid", "L2:run"].indexOf(name) >= 0;
  var fmt = isRaw ? Minard.fmtInt : Minard.fmtSI;
  var title = Minard.yTitle(name);
  var chart = Minard.chart(document.getElementById("graph-chart"), {
    series: [{ label: name }], height: 320, fill: true, yFormat: fmt, yLabel: title,
    onZoom: function (a, b) { Minard.timeRange.zoom(a, b); },
    onZoomReset: function () { Minard.timeRange.reset(); }
  });
  var histOpts = { xFormat: fmt, xLabel: title, label: "points" };
  var hist = Minard.histogram(document.getElementById("graph-hist"), histOpts);
  var histLog = Minard.histogram(document.getElementById("graph-hist-log"), Object.assign({ log: true }, histOpts));
  var summary = document.getElementById("graph-summary");
  var latestEl = document.getElementById("graph-latest");
  var timer = null, generation = 0;

  function load(w) {
    var mine = ++generation;
    if (timer) { clearTimeout(timer); timer = null; }
    Minard.getJSON("metric?" + Minard.query({ expr: exprs.join(","), start: w.start, stop: w.stop,
                                             step: w.step, now: Minard.nowSeconds() })).then(function (answer) {
      if (mine !== generation) { return; }
      var values = masked ? answer.values || {} : { main: answer.values };
      var xs = [];
      for (var t = w.start; t < w.stop; t += w.step) { xs.push(t); }
      var raw = values[masked ? name : "main"] || [];
      var ys = xs.map(function (x, i) { return Minard.num(raw[i]); }); // missing: null, a gap
      if (masked) {
        var beat = values.heartbeat || [], total = (values.TOTAL || []).map(Minard.num);
        ys = ys.map(function (v, i) { return beat[i] === null && !(total[i] > 0) ? null : v; });
      }
      if (w.live && Minard.isRate(name)) { Minard.dropPartial(xs, ys, w.step, Minard.nowSeconds()); }
      chart.setData([xs, ys]);
      var present = ys.filter(function (v) { return v !== null; });
      if (!present.length) {
        Minard.text(summary, "missing data: nothing stored for " + name + " in this window");
        summary.className = "message nodata";
        Minard.text(latestEl, "no data");
      } else {
        var sum = present.reduce(function (a, b) { return a + b; }, 0);
        Minard.text(summary, present.length + " of " + ys.length + " points (" + Minard.fmtInt(w.step) +
                    " s each) · min " + fmt(Math.min.apply(null, present)) + " · mean " + fmt(sum / present.length) +
                    " · max " + fmt(Math.max.apply(null, present)) + " · " + Minard.fmtTime(w.start) + " → " +
                    Minard.fmtTime(w.stop) + " UTC");
        summary.className = "hint";
        Minard.text(latestEl, fmt(present[present.length - 1]));
      }
      hist.setValues(present, 50);
      histLog.setValues(present, 50);
    }).catch(function (err) {
      Minard.text(summary, "cannot load " + name + ": " + err.message);
      summary.className = "message bad-text";
    }).then(function () {
      if (mine === generation && w.live) {
        timer = setTimeout(function () {
          Minard.pause.whenLive(function () { load(Minard.timeRange.current()); }, load);
        }, Math.max(w.step, 5) * 1000);
      }
    });
  }

  Minard.timeRange.init(load);
}());
