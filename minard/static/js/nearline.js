/* Nearline: the run form goes to nearline/<run> (a path, not ?run=); the results are read
   again every POLL_MS, not while the page is paused (the server renders them escaped; the
   parsed copy runs no script). */
(function () {
  "use strict";
  var POLL_MS = 10000;
  var form = document.getElementById("nearline-run");
  var updated = document.getElementById("nearline-updated");
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var run = document.getElementById("run-input").value.trim();
    if (/^\d+$/.test(run)) { location.href = Minard.root + "nearline/" + run; }
  });

  function refresh() {
    fetch(location.href, { cache: "no-store", credentials: "same-origin" }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (html) {
      var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("nearline-result");
      var shown = document.getElementById("nearline-result");
      if (!fresh || !shown) { throw new Error("unexpected answer"); }
      shown.replaceWith(document.importNode(fresh, true));
      Minard.text(updated, "updated " + new Date().toISOString().slice(11, 19) + " UTC");
      updated.className = "hint";
    }).catch(function (err) {
      Minard.text(updated, "cannot refresh: " + err.message);
      updated.className = "hint bad-text";
    }).then(function () { setTimeout(function () { Minard.pause.whenLive(refresh); }, POLL_MS); });
  }
  setTimeout(function () { Minard.pause.whenLive(refresh); }, POLL_MS);
}());
