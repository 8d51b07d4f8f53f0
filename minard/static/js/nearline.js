/* Nearline: the run form goes to nearline/<run> (a path, not ?run=). */
(function () {
  "use strict";
  var form = document.getElementById("nearline-run");
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var run = document.getElementById("run-input").value.trim();
    if (/^\d+$/.test(run)) { location.href = Minard.root + "nearline/" + run; }
  });
}());
