/* Detector: occupancy of all 10240 channels, refreshed every 5 s. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var tooltip = $("det-tooltip");
  var map = new Minard.CrateMap($("det-crates"), { onHover: function (t) { Minard.text(tooltip, t); },
                                                   format: function (v) { return v.toExponential(2); } });
  var hist = Minard.histogram($("det-hist"), { label: "channels", xFormat: function (v) { return v.toExponential(1); } });
  var histLog = Minard.histogram($("det-hist-log"), { log: true, label: "channels", xFormat: function (v) { return v.toExponential(1); } });
  var last = null, timer = null;

  function percentile(sorted, q) { return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]; }

  function draw() {
    if (!last) { return; }
    var values = last.values;
    var present = values.filter(function (v) { return v !== null; }).sort(function (a, b) { return a - b; });
    var lo, hi;
    if ($("det-scale").value === "auto" && present.length) {
      lo = percentile(present, 0.01);
      hi = percentile(present, 0.99);
      $("det-lo").value = +lo.toPrecision(3);
      $("det-hi").value = +hi.toPrecision(3);
    } else {
      lo = parseFloat($("det-lo").value) || 0;
      hi = parseFloat($("det-hi").value) || 1;
    }
    if (!(hi > lo)) { hi = lo + 1e-9; }
    var colour = function (v) { return Minard.ramp((v - lo) / (hi - lo)); };
    map.draw(values, colour);
    Minard.legend($("det-legend-bar"), colour, lo, hi);
    Minard.text($("det-legend-lo"), lo.toExponential(2));
    Minard.text($("det-legend-hi"), hi.toExponential(2));
    if (!present.length) {
      Minard.text($("det-info"), "no finalised occupancy for this window");
      $("det-info").className = "hint nodata";
      hist.setBins([], []);
      histLog.setBins([], []);
      Minard.text($("det-summary"), "no data");
      return;
    }
    var start = last.start;
    Minard.text($("det-info"), present.length + " channels with data · bucket " + Minard.fmtTime(start) +
                " UTC + " + last.interval + " s");
    $("det-info").className = "hint";
    var top = hi + (hi - lo);
    var shown = present.filter(function (v) { return v <= top; });
    hist.setValues(shown, 50);
    histLog.setValues(shown, 50);
    var mean = present.reduce(function (a, b) { return a + b; }, 0) / present.length;
    var above = present.length - shown.length;
    Minard.text($("det-summary"), "mean " + mean.toExponential(2) + " · median " + percentile(present, 0.5).toExponential(2) +
                (above ? " · " + above + " channels above " + top.toExponential(1) + " not shown" : ""));
  }

  function load() {
    if (timer) { clearTimeout(timer); }
    Minard.getJSON("query?name=occupancy&step=" + $("det-window").value).then(function (answer) {
      last = answer;
      draw();
    }).catch(function (err) {
      Minard.text($("det-info"), "cannot load occupancy: " + err.message);
      $("det-info").className = "hint bad-text";
    }).then(function () { timer = setTimeout(load, 5000); });
  }

  $("det-window").addEventListener("change", load);
  $("det-scale").addEventListener("change", draw);
  ["det-lo", "det-hi"].forEach(function (id) {
    $(id).addEventListener("change", function () { $("det-scale").value = "fixed"; draw(); });
  });
  load();
}());
