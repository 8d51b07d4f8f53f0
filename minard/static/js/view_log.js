/* Log page: live tail of one program's log (`tail -f` in the browser).
 *
 * Asks tail?name= (the last lines), then tail?name=&seek=<offset> every second; the
 * server follows a rotation (seek beyond the file -> the rest of <name>.log.1, then the
 * new file). Lines are `YYYY-MM-DD HH:MM:SS,mmm - name - LEVEL - message` (UTC), the
 * message escaped like Python's unicode_escape (so one record is one line); they are
 * shown newest first with a row when the date changes, filtered by level, at most
 * MAX_LINES kept. Unparsable lines are shown as they are, level "???". textContent only.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;
  var MAX_LINES = 1000;
  var table = document.getElementById("log");
  if (!table) { return; }
  var name = table.dataset.name;
  var tbody = document.getElementById("log-lines");
  var stateNode = document.getElementById("log-state");
  var filter = document.getElementById("level-filter");
  var LINE = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d),(\d{3}) - (\S+) - ([A-Z]+|Level -?\d+) - (.*)$/;
  var NUMBERS = { DEBUG: 10, INFO: 20, SUCCESS: 21, WARNING: 30, WARN: 30, DANGER: 40,
                  ERROR: 40, CRITICAL: 50 };

  /* The inverse of Python's str.encode("unicode_escape"). */
  function unescapeMessage(text) {
    return text.replace(/\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[\\nrtabfv'"0])/g,
      function (whole, e) {
        switch (e.charAt(0)) {
          case "x": case "u": case "U": {
            var code = parseInt(e.slice(1), 16);
            return code <= 0x10FFFF ? String.fromCodePoint(code) : whole;
          }
          case "n": return "\n";
          case "r": return "\r";
          case "t": return "\t";
          case "a": return "\x07";
          case "b": return "\b";
          case "f": return "\f";
          case "v": return "\v";
          case "0": return "\0";
          default: return e; // \\ \' \"
        }
      });
  }

  function parse(line) {
    var m = LINE.exec(line);
    if (!m) { return null; }
    var level = m[5];
    var number = NUMBERS[level];
    if (number === undefined && level.indexOf("Level ") === 0) { number = parseInt(level.slice(6), 10); }
    return { date: m[1], time: m[2], level: level, levelno: number,
             message: unescapeMessage(m[6]) };
  }

  /* The filter checkbox that decides whether a line shows: its level's own box, or the
   * box of the nearest lower standard level (CRITICAL and ERROR go with DANGER). */
  function filterLabel(p) {
    if (!p) { return null; }
    var n = p.levelno;
    if (n === undefined || isNaN(n)) { return null; }
    if (n >= 40) { return "DANGER"; }
    if (n >= 30) { return "WARNING"; }
    if (n === 21) { return "SUCCESS"; }
    if (n >= 20) { return "INFO"; }
    return "DEBUG";
  }
  function cssLevel(label) { return label ? label.toLowerCase() : "unknown"; }

  function enabledLevels() {
    var on = {};
    if (!filter) { return null; }
    Array.prototype.forEach.call(filter.querySelectorAll("input[type=checkbox]"), function (box) {
      on[box.value] = box.checked;
    });
    return on;
  }
  function applyFilter() {
    var on = enabledLevels();
    Array.prototype.forEach.call(tbody.rows, function (row) {
      if (row.classList.contains("date-row")) { return; }
      var label = row.dataset.filter;
      row.hidden = !!(on && label && on[label] === false);
    });
    updateDateRows();
  }
  /* A date row is shown when a visible line belongs to it. */
  function updateDateRows() {
    var visible = {};
    Array.prototype.forEach.call(tbody.rows, function (row) {
      if (!row.classList.contains("date-row") && !row.hidden) { visible[row.dataset.date] = true; }
    });
    Array.prototype.forEach.call(tbody.querySelectorAll("tr.date-row"), function (row) {
      row.hidden = !visible[row.dataset.date];
    });
  }
  /* The levels shown are in the URL (?hide=DEBUG,INFO): a reload or a link shows the same
   * lines. Only the hidden ones are listed, so a plain link shows every level. */
  function restoreLevels() {
    var hide = (Minard.params.get("hide") || "").split(",");
    Array.prototype.forEach.call(filter.querySelectorAll("input[type=checkbox]"), function (box) {
      box.checked = hide.indexOf(box.value) < 0;
    });
  }
  function saveLevels() {
    var on = enabledLevels(), hidden = Object.keys(on).filter(function (k) { return !on[k]; });
    Minard.params.set({ hide: hidden.join(",") || null });
  }
  if (filter) {
    restoreLevels();
    filter.addEventListener("change", function () { saveLevels(); applyFilter(); });
  }

  var newestDate = null;  // date of the row at the top
  var lineCount = 0;

  function dateRow(date) {
    var tr = Minard.el("tr", "date-row");
    tr.dataset.date = date;
    var td = Minard.el("td", null, date);
    td.colSpan = 3;
    tr.appendChild(td);
    return tr;
  }

  function lineRow(line, p) {
    var label = filterLabel(p);
    var tr = Minard.el("tr", "line" + (p ? "" : " unparsed") +
                       (label === "DANGER" ? " level-row-danger" : label === "WARNING" ? " level-row-warning" : ""));
    tr.dataset.filter = label || "";
    tr.dataset.date = p ? p.date : (newestDate || "");
    tr.appendChild(Minard.el("td", "time", p ? p.time : ""));
    var lvl = Minard.el("td", "lvl");
    lvl.appendChild(Minard.el("span", "level level-" + cssLevel(label), p ? p.level : "???"));
    tr.appendChild(lvl);
    tr.appendChild(Minard.el("td", "msg", p ? p.message : line));
    return tr;
  }

  /* lines: oldest first, as in the file. The newest goes to the top. */
  function add(lines) {
    var on = enabledLevels();
    lines.forEach(function (line) {
      if (!line) { return; }
      var p = parse(line);
      if (p && p.date !== newestDate) {
        tbody.insertBefore(dateRow(p.date), tbody.firstChild);
        newestDate = p.date;
      }
      var row = lineRow(line, p);
      if (on && row.dataset.filter && on[row.dataset.filter] === false) { row.hidden = true; }
      // below the date row of its day, above the older lines
      var top = tbody.firstChild;
      if (top && top.classList && top.classList.contains("date-row")) {
        tbody.insertBefore(row, top.nextSibling);
      } else {
        tbody.insertBefore(row, top);
      }
      lineCount += 1;
    });
    while (lineCount > MAX_LINES) {
      var last = tbody.rows[tbody.rows.length - 1];
      if (!last.classList.contains("date-row")) { lineCount -= 1; }
      tbody.removeChild(last);
    }
    var tail = tbody.rows[tbody.rows.length - 1];
    while (tail && tail.classList.contains("date-row") && tbody.rows.length > 1 &&
           tail.previousSibling && tail.previousSibling.classList.contains("date-row")) {
      tbody.removeChild(tail); // a date left without lines at the bottom
      tail = tbody.rows[tbody.rows.length - 1];
    }
    updateDateRows();
  }

  var seek = null;
  var busy = false;
  function poll() {
    if (busy) { return; }
    busy = true;
    var params = { name: name };
    if (seek !== null) { params.seek = seek; }
    Minard.getJSON("tail?" + Minard.query(params)).then(function (r) {
      busy = false;
      if (typeof r.seek === "number") { seek = r.seek; }
      add(r.lines || []);
      Minard.text(stateNode, lineCount ? "" : "no lines yet: " + name +
                  " has posted nothing to the log server (minard's own processes post " +
                  "their warnings, errors and link changes)");
      stateNode.className = "hint";
    }, function (err) {
      busy = false;
      Minard.text(stateNode, "cannot read the log (" + err.message + "); retrying…");
      stateNode.className = "hint bad-text";
    });
  }

  poll();
  setInterval(poll, POLL_MS);
  window.MinardLog = { parse: parse, unescapeMessage: unescapeMessage };
}());
