/* Channel health page: the health service's findings (get_health), refreshed every
 * POLL_MS; masking and unmasking a channel (POST mask_channel, JSON, with the user and
 * password typed in the form sent as Basic credentials with that request only: the
 * browser never keeps them). Everything from the server goes in with textContent.
 */
(function () {
  "use strict";

  var POLL_MS = 10000;
  var $ = function (id) { return document.getElementById(id); };
  if (!$("health-open")) { return; }
  /* the time-range values of the DAQ page's control (constants.TIME_RANGES) */
  var RANGES = [["15m", 900], ["1h", 3600], ["3h", 10800], ["9h", 32400], ["1d", 86400],
                ["3d", 259200], ["1w", 604800], ["1mo", 2592000], ["3mo", 7776000]];
  var KINDS = { dead: "dead", hot: "hot", noisy: "noisy", base: "base current out of range" };
  var timer = null;

  function where(f) {
    var text = "crate " + f.crate;
    if (f.card !== null && f.card !== undefined) { text += " · card " + f.card; }
    if (f.channel !== null && f.channel !== undefined) { text += " · channel " + f.channel + " (" + f.index + ")"; }
    return text;
  }

  function finding(f) { return f.kind === "dark" ? f.level + " dark" : (KINDS[f.kind] || f.kind); }

  function rangeFor(seconds) {
    for (var i = 0; i < RANGES.length; i++) { if (RANGES[i][1] >= seconds) { return RANGES[i][0]; } }
    return RANGES[RANGES.length - 1][0];
  }

  /* links to the DAQ page's view of the crate or card, one per quantity, over a range
     that holds the finding */
  function history(f, now) {
    var cell = Minard.el("td", "history");
    var span = Math.max(600, now - f.since + 300);
    (f.quantities || []).forEach(function (q, i) {
      var params = { data: q, crate: f.crate, card: f.card, range: rangeFor(span) };
      var a = Minard.el("a", null, { occupancy: "occupancy", cmos: "CMOS", base: "base" }[q] || q);
      a.href = Minard.url("daq?" + Minard.query(params));
      if (i) { cell.appendChild(document.createTextNode(" · ")); }
      cell.appendChild(a);
    });
    return cell;
  }

  function summary(f) {
    var cell = Minard.el("td", "summary");
    (f.summary || []).forEach(function (line) { cell.appendChild(Minard.el("div", null, line)); });
    return cell;
  }

  function fillForm(f) {
    $("mask-crate").value = f.crate;
    $("mask-card").value = f.card;
    $("mask-channel").value = f.channel;
    $("mask-reason").value = finding(f) + " since " + Minard.fmtTime(f.since) + " UTC";
    $("mask-form").scrollIntoView({ behavior: "smooth", block: "center" });
    $("mask-user").focus();
  }

  function fill(tbody, empty, items, build) {
    tbody.textContent = "";
    items.forEach(function (item) { tbody.appendChild(build(item)); });
    empty.hidden = items.length > 0;
    tbody.parentNode.hidden = items.length === 0;
  }

  function render(r) {
    var now = r.now;
    var state = $("health-state");
    state.className = "hint";
    if (!r.running) {
      Minard.text(state, "The health service has not judged a bucket yet (it runs in the log server; [health] in minard.ini).");
      state.className = "hint warn-text";
    } else {
      var c = r.config || {};
      var parts = ["Judging the finalised " + r.interval + "-s buckets",
                   "last: " + Minard.fmtTime(r.bucket_start).slice(11) + " UTC, judged " + Minard.fmtAge(r.age) + " ago"];
      if (r.applied !== null && c["warmup-buckets"] && r.applied < c["warmup-buckets"]) {
        parts.push("baselines warming up: " + r.applied + " of " + c["warmup-buckets"] + " buckets");
      }
      parts.push("hot: ×" + c["hot-factor"] + " its baseline and ×" + c["hot-card-factor"] + " its card");
      parts.push("base current: ±" + c["base-band"] + " ADC counts");
      Minard.text(state, parts.join(" · "));
      if (r.age > 2 * r.interval + 200) {
        Minard.text(state, "STALE: no bucket judged for " + Minard.fmtAge(r.age) + " (log server down, or no finalised data). " + parts.join(" · "));
        state.className = "hint bad-text";
      }
    }
    var open = r.open || [];
    var counts = {};
    open.forEach(function (f) { var k = finding(f); counts[k] = (counts[k] || 0) + 1; });
    Minard.text($("open-count"), open.length ? "(" + open.length + ": " + Object.keys(counts).map(function (k) {
      return counts[k] + " " + k; }).join(", ") + ")" : "");
    var masked = {};
    (r.masked || []).forEach(function (m) { masked[m.index] = m; });
    fill($("health-open").tBodies[0], $("open-empty"), open, function (f) {
      var tr = Minard.el("tr", "finding " + (f.kind === "dark" ? "level-row-danger" : "level-row-warning"));
      var m = f.level === "channel" ? masked[f.index] : null;
      tr.dataset.key = f.key;
      tr.appendChild(Minard.el("td", "time", Minard.fmtTime(f.since)));
      tr.appendChild(Minard.el("td", "num", Minard.fmtAge(now - f.since)));
      tr.appendChild(Minard.el("td", "where", where(f)));
      var kind = Minard.el("td", "kind " + (f.kind === "dark" ? "bad-text" : "warn-text"), finding(f));
      if (m) { // masked since it opened: it ends with the next bucket judged
        kind.appendChild(Minard.el("div", "hint", "masked by " + m.by + ": ends with the next bucket"));
        tr.classList.add("now-masked");
      }
      tr.appendChild(kind);
      tr.appendChild(summary(f));
      tr.appendChild(history(f, now));
      var act = Minard.el("td", "act");
      if (f.level === "channel" && r.masking && !m) {
        var b = Minard.el("button", "hint-button", "mask…");
        b.type = "button";
        b.title = "known bad: mask it (no finding, no alarm)";
        b.addEventListener("click", function () { fillForm(f); });
        act.appendChild(b);
      }
      tr.appendChild(act);
      return tr;
    });
    fill($("health-closed").tBodies[0], $("closed-empty"), r.closed || [], function (f) {
      var tr = Minard.el("tr", "finding");
      tr.dataset.key = f.key;
      tr.appendChild(Minard.el("td", "time", Minard.fmtTime(f.since)));
      tr.appendChild(Minard.el("td", "time", Minard.fmtTime(f.until)));
      tr.appendChild(Minard.el("td", "num", Minard.fmtAge(f.until - f.since)));
      tr.appendChild(Minard.el("td", "where", where(f)));
      tr.appendChild(Minard.el("td", "kind", finding(f) + ({ masked: " (masked)", reset: " (baseline reset)" }[f.end] || "")));
      tr.appendChild(summary(f));
      tr.appendChild(history(f, f.until));
      return tr;
    });
    fill($("health-masked").tBodies[0], $("masked-empty"), r.masked || [], function (m) {
      var tr = Minard.el("tr", "masked");
      tr.dataset.index = m.index;
      tr.appendChild(Minard.el("td", "where", where(m)));
      tr.appendChild(Minard.el("td", null, m.by));
      tr.appendChild(Minard.el("td", "time", Minard.fmtTime(m.at)));
      tr.appendChild(Minard.el("td", "reason", m.reason));
      var act = Minard.el("td", "act");
      var b = Minard.el("button", "hint-button", "unmask");
      b.type = "button";
      b.disabled = !r.masking;
      b.addEventListener("click", function () {
        post({ action: "unmask", crate: m.crate, card: m.card, channel: m.channel });
      });
      act.appendChild(b);
      tr.appendChild(act);
      return tr;
    });
    $("mask-submit").disabled = !r.masking;
    if (!r.masking) {
      Minard.text($("mask-result"), "masking is off on this server (the web role has no --auth-file)");
    }
  }

  function load() {
    if (timer) { clearTimeout(timer); }
    return Minard.getJSON("get_health?closed=50").then(render, function (err) {
      Minard.text($("health-state"), "cannot load the channel health: " + err.message);
      $("health-state").className = "hint bad-text";
    }).then(function () { timer = setTimeout(load, POLL_MS); });
  }

  function basic(user, password) {
    var bytes = new TextEncoder().encode(user + ":" + password);
    var binary = "";
    bytes.forEach(function (b) { binary += String.fromCharCode(b); });
    return "Basic " + btoa(binary);
  }

  function post(body) {
    var result = $("mask-result");
    var user = $("mask-user").value.trim(), password = $("mask-password").value;
    if (!user || !password) {
      Minard.text(result, "type your user and password below first");
      result.className = "hint bad-text";
      $("mask-user").focus();
      return Promise.resolve();
    }
    Minard.text(result, body.action === "mask" ? "masking…" : "unmasking…");
    result.className = "hint";
    return fetch(Minard.url("mask_channel"), {
      method: "POST", cache: "no-store", credentials: "omit",
      headers: { "Content-Type": "application/json", "Authorization": basic(user, password) },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) { throw new Error(j.error || ("HTTP " + r.status)); }
        Minard.text(result, "crate " + body.crate + " card " + body.card + " channel " + body.channel +
                    (body.action === "mask" ? " masked" : " unmasked") + " by " + j.by);
        result.className = "hint ok-text";
        if (body.action === "mask") { $("mask-reason").value = ""; }
        return load();
      });
    }).catch(function (err) {
      Minard.text(result, "not done: " + err.message);
      result.className = "hint bad-text";
    });
  }

  $("mask-form").addEventListener("submit", function (e) {
    e.preventDefault();
    post({ action: "mask", crate: parseInt($("mask-crate").value, 10), card: parseInt($("mask-card").value, 10),
           channel: parseInt($("mask-channel").value, 10), reason: $("mask-reason").value });
  });
  load();
}());
