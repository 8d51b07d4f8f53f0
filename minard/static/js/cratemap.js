/* cratemap.js: the detector as 20 crates × 16 cards × 32 channels, drawn on canvases.
 *
 *   var map = new Minard.CrateMap(container, {crates: [0..19], onClick(crate, card, channel),
 *                                              onHover(text), format(v), unit});
 *   map.draw(values, colour)   values: 10240 numbers or null; colour(v) -> CSS colour
 *   map.clear()                forget the values (every channel "no data"), tooltip cleared
 * Channel 31 is at the top of each crate, card 0 on the left (as the original).
 *
 * Crates not installed in SNO+ (crate 19: it exists in the channel numbering only) are
 * drawn hatched and labelled "not installed", never as a dead (grey, "no data") crate. The
 * installed crates come from the server (constants.INSTALLED_CRATES), in the
 * data-installed-crates attribute of an element of the page ("0 1 2 ... 18").
 */
(function () {
  "use strict";
  var CELL = 4; // canvas pixels per channel (3 drawn + 1 gap)

  function installedCrates() {
    var holder = document.querySelector("[data-installed-crates]");
    if (!holder) { return null; } // not said: every crate counts as installed
    var out = {};
    holder.dataset.installedCrates.split(/[\s,]+/).forEach(function (c) {
      if (c !== "") { out[parseInt(c, 10)] = true; }
    });
    return out;
  }
  var INSTALLED = installedCrates();
  function isInstalled(crate) { return INSTALLED === null || !!INSTALLED[crate]; }

  function cssVar(name, fallback) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
  }

  function CrateMap(container, opts) {
    var self = this;
    this.opts = opts || {};
    this.crates = this.opts.crates || Array.from({ length: 20 }, function (_, i) { return i; });
    this.cards = this.opts.cards || Array.from({ length: 16 }, function (_, i) { return i; });
    this.canvases = {};
    this.values = null;
    this.hovering = null; // {crate, card, channel} under the mouse
    container.textContent = "";
    this.crates.forEach(function (crate) {
      var installed = isInstalled(crate);
      var box = Minard.el("div", "crate" + (installed ? "" : " not-installed"));
      box.dataset.crate = crate;
      var title = self.opts.big ? "crate " + crate : String(crate);
      box.appendChild(Minard.el("div", "crate-title", installed ? title : title + " · not installed"));
      var canvas = document.createElement("canvas");
      canvas.width = self.cards.length * CELL;
      canvas.height = 32 * CELL;
      if (typeof ResizeObserver !== "undefined") {
        new ResizeObserver(function () { self.redraw(); }).observe(canvas);
      }
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", installed ? "crate " + crate : "crate " + crate + ": not installed in SNO+");
      box.title = installed ? "" : "crate " + crate + " is not installed in SNO+";
      box.appendChild(canvas);
      container.appendChild(box);
      self.canvases[crate] = canvas;
      canvas.addEventListener("mousemove", function (e) { self._hover(crate, canvas, e); });
      canvas.addEventListener("mouseleave", function () {
        self.hovering = null;
        if (self.opts.onHover) { self.opts.onHover(""); }
      });
      canvas.addEventListener("click", function (e) {
        if (!installed) { return; }
        var at = self._at(canvas, e);
        if (self.opts.onClick) { self.opts.onClick(crate, at.card, at.channel); }
      });
    });
    if (!this.crates.some(isInstalled)) {
      this.clear(); // nothing will ever be drawn here: show the hatching at once
    }
  }

  CrateMap.isInstalled = isInstalled;

  CrateMap.prototype._at = function (canvas, e) {
    var r = canvas.getBoundingClientRect();
    var col = Math.min(this.cards.length - 1, Math.max(0, Math.floor((e.clientX - r.left) / r.width * this.cards.length)));
    var row = Math.min(31, Math.max(0, Math.floor((e.clientY - r.top) / r.height * 32)));
    return { card: this.cards[col], channel: 31 - row };
  };

  CrateMap.prototype._hover = function (crate, canvas, e) {
    var at = this._at(canvas, e);
    this.hovering = { crate: crate, card: at.card, channel: at.channel };
    this._tell();
  };

  /* The tooltip of the channel under the mouse, from the values drawn now. */
  CrateMap.prototype._tell = function () {
    if (!this.opts.onHover || !this.hovering) { return; }
    var h = this.hovering;
    if (!isInstalled(h.crate)) {
      this.opts.onHover("crate " + h.crate + ": not installed in SNO+ (no channels)");
      return;
    }
    var index = h.crate * 512 + h.card * 32 + h.channel;
    var v = this.values ? this.values[index] : null;
    var fmt = this.opts.format || Minard.fmtSI;
    var unit = this.opts.unit ? " " + this.opts.unit : "";
    this.opts.onHover("crate " + h.crate + " · card " + h.card + " · channel " + h.channel +
                      " (index " + index + "): " + (v === null || v === undefined ? "no data" : fmt(v) + unit) +
                      this._flagText(h.crate, h.card, h.channel));
  };

  CrateMap.prototype.draw = function (values, colour) {
    var self = this;
    this.values = values;
    this.colour = colour;
    var nodata = cssVar("--nodata", "#555");
    var hatch = cssVar("--line", "#2c3845"), panel = cssVar("--panel", "#171e26");
    var muted = cssVar("--muted", "#8a98a8");
    var dpr = window.devicePixelRatio || 1;
    this.crates.forEach(function (crate) {
      var canvas = self.canvases[crate];
      // draw at the size the canvas is shown, so every cell and gap is whole device pixels
      var w = Math.max(self.cards.length, Math.round(canvas.clientWidth * dpr));
      var h = Math.max(32, Math.round(canvas.clientHeight * dpr));
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      var ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, w, h);
      if (!isInstalled(crate)) {
        notInstalled(ctx, w, h, panel, hatch, muted, dpr);
        return;
      }
      var cw = w / self.cards.length, ch = h / 32;
      var gap = Math.min(cw, ch) >= 5 ? 1 : 0;
      self.cards.forEach(function (card, col) {
        var x0 = Math.round(col * cw), x1 = Math.round((col + 1) * cw) - gap;
        for (var c = 0; c < 32; c++) {
          var v = values ? values[crate * 512 + card * 32 + c] : null;
          var y0 = Math.round((31 - c) * ch), y1 = Math.round((32 - c) * ch) - gap;
          ctx.fillStyle = v === null || v === undefined || !colour ? nodata : colour(v);
          ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
        }
      });
      if (self.marks) { self._outline(ctx, crate, w, h, dpr); } // channel health (below)
    });
    this._tell(); // the tooltip shows the new value of the channel under the mouse
  };

  /* Hatching and a vertical "not installed": clearly not a dead (grey) crate. */
  function notInstalled(ctx, w, h, panel, hatch, muted, dpr) {
    ctx.fillStyle = panel;
    ctx.fillRect(0, 0, w, h);
    ctx.strokeStyle = hatch;
    ctx.lineWidth = Math.max(1, dpr);
    var step = Math.max(6, Math.round(8 * dpr));
    ctx.beginPath();
    for (var x = -h; x < w; x += step) { ctx.moveTo(x, h); ctx.lineTo(x + h, 0); }
    ctx.stroke();
    var size = Math.max(9, Math.min(w / 5, 13 * dpr));
    ctx.save();
    ctx.translate(w / 2, h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillStyle = muted;
    ctx.font = Math.round(size) + "px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText("not installed", 0, 0);
    ctx.restore();
  }

  /* Every channel back to "no data" (the data went away): nothing old left on screen. */
  CrateMap.prototype.clear = function () {
    this.hovering = null;
    if (this.opts.onHover) { this.opts.onHover(""); }
    this.draw(null, this.colour || null);
  };

  CrateMap.prototype.redraw = function () {
    if (this.colour || !this.crates.some(isInstalled)) { this.draw(this.values, this.colour); }
  };

  CrateMap.prototype.select = function (crate) {
    Object.keys(this.canvases).forEach(function (c) {
      this.canvases[c].parentNode.classList.toggle("selected", String(c) === String(crate));
    }, this);
  };

  /* -- outlines of flagged channels (channel health, static/js/health_marks.js) ---------
   *   map.outline(marks)  marks: [{crate, card, channel, text}], card or channel null for
   *                       a whole crate or card; drawn over the colours (whatever scale
   *                       they use) as a --flag line on a --bg halo; [] or null: none.
   * Self-contained: draw() calls _outline() per crate, the tooltip adds _flagText(). */
  CrateMap.prototype.outline = function (marks) {
    this.marks = marks && marks.length ? marks : null;
    this.redraw();
  };

  CrateMap.prototype._outline = function (ctx, crate, w, h, dpr) {
    var cols = this.cards.length, cw = w / cols, ch = h / 32;
    var halo = cssVar("--bg", "#0f1419"), flag = cssVar("--flag", "#ff3df5");
    var boxes = [];
    this.marks.forEach(function (m) {
      if (m.crate !== crate) { return; }
      if (m.card === null || m.card === undefined) { boxes.push([0, 0, w, h]); return; }
      var col = this.cards.indexOf(m.card);
      if (col < 0) { return; }
      var x0 = Math.round(col * cw), x1 = Math.round((col + 1) * cw);
      if (m.channel === null || m.channel === undefined) { boxes.push([x0, 0, x1, h]); return; }
      boxes.push([x0, Math.round((31 - m.channel) * ch), x1, Math.round((32 - m.channel) * ch)]);
    }, this);
    var line = Math.max(1.5, 1.5 * dpr);
    [[halo, line * 2.5], [flag, line]].forEach(function (pen) {
      ctx.strokeStyle = pen[0];
      ctx.lineWidth = pen[1];
      boxes.forEach(function (b) {
        var inset = Math.min(line, (b[2] - b[0]) / 4); // a whole crate or card: inside the canvas
        var x0 = Math.max(b[0] - line / 2, inset), y0 = Math.max(b[1] - line / 2, inset);
        var x1 = Math.min(b[2] + line / 2, w - inset), y1 = Math.min(b[3] + line / 2, h - inset);
        ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      });
    });
  };

  CrateMap.prototype._flagText = function (crate, card, channel) {
    var texts = (this.marks || []).filter(function (m) {
      return m.crate === crate && (m.card === null || m.card === undefined ||
        (m.card === card && (m.channel === null || m.channel === undefined || m.channel === channel)));
    }).map(function (m) { return m.text; });
    return texts.length ? " · flagged: " + texts.join("; ") : "";
  };

  /* A horizontal colour legend on a canvas; colour null clears it. */
  function legend(canvas, colour, lo, hi) {
    var ctx = canvas.getContext("2d");
    canvas.width = 200;
    canvas.height = 10;
    ctx.clearRect(0, 0, 200, 10);
    if (!colour) { return; }
    for (var x = 0; x < 200; x++) {
      ctx.fillStyle = colour(lo + (hi - lo) * x / 199);
      ctx.fillRect(x, 0, 1, 10);
    }
  }

  Minard.CrateMap = CrateMap;
  Minard.legend = legend;
}());
