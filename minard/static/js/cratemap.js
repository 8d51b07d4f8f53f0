/* cratemap.js: the detector as 20 crates × 16 cards × 32 channels, drawn on canvases.
 *
 *   var map = new Minard.CrateMap(container, {crates: [0..19], onClick(crate, card, channel),
 *                                              onHover(text)});
 *   map.draw(values, colour)   values: 10240 numbers or null; colour(v) -> CSS colour
 * Channel 31 is at the top of each crate, card 0 on the left (as the original).
 */
(function () {
  "use strict";
  var CELL = 4; // canvas pixels per channel (3 drawn + 1 gap)

  function CrateMap(container, opts) {
    var self = this;
    this.opts = opts || {};
    this.crates = this.opts.crates || Array.from({ length: 20 }, function (_, i) { return i; });
    this.cards = this.opts.cards || Array.from({ length: 16 }, function (_, i) { return i; });
    this.canvases = {};
    this.values = null;
    container.textContent = "";
    this.crates.forEach(function (crate) {
      var box = Minard.el("div", "crate");
      box.dataset.crate = crate;
      box.appendChild(Minard.el("div", "crate-title", self.opts.big ? "crate " + crate : String(crate)));
      var canvas = document.createElement("canvas");
      canvas.width = self.cards.length * CELL;
      canvas.height = 32 * CELL;
      if (typeof ResizeObserver !== "undefined") {
        new ResizeObserver(function () { self.redraw(); }).observe(canvas);
      }
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", "crate " + crate);
      box.appendChild(canvas);
      container.appendChild(box);
      self.canvases[crate] = canvas;
      canvas.addEventListener("mousemove", function (e) { self._hover(crate, canvas, e); });
      canvas.addEventListener("mouseleave", function () { if (self.opts.onHover) { self.opts.onHover(""); } });
      canvas.addEventListener("click", function (e) {
        var at = self._at(canvas, e);
        if (self.opts.onClick) { self.opts.onClick(crate, at.card, at.channel); }
      });
    });
  }

  CrateMap.prototype._at = function (canvas, e) {
    var r = canvas.getBoundingClientRect();
    var col = Math.min(this.cards.length - 1, Math.max(0, Math.floor((e.clientX - r.left) / r.width * this.cards.length)));
    var row = Math.min(31, Math.max(0, Math.floor((e.clientY - r.top) / r.height * 32)));
    return { card: this.cards[col], channel: 31 - row };
  };

  CrateMap.prototype._hover = function (crate, canvas, e) {
    if (!this.opts.onHover) { return; }
    var at = this._at(canvas, e);
    var index = crate * 512 + at.card * 32 + at.channel;
    var v = this.values ? this.values[index] : null;
    var fmt = this.opts.format || Minard.fmtSI;
    this.opts.onHover("crate " + crate + " · card " + at.card + " · channel " + at.channel +
                      " (index " + index + "): " + (v === null || v === undefined ? "no data" : fmt(v)));
  };

  CrateMap.prototype.draw = function (values, colour) {
    var self = this;
    this.values = values;
    this.colour = colour;
    var nodata = getComputedStyle(document.documentElement).getPropertyValue("--nodata").trim() || "#555";
    var dpr = window.devicePixelRatio || 1;
    this.crates.forEach(function (crate) {
      var canvas = self.canvases[crate];
      // draw at the size the canvas is shown, so every cell and gap is whole device pixels
      var w = Math.max(self.cards.length, Math.round(canvas.clientWidth * dpr));
      var h = Math.max(32, Math.round(canvas.clientHeight * dpr));
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      var ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, w, h);
      var cw = w / self.cards.length, ch = h / 32;
      var gap = Math.min(cw, ch) >= 5 ? 1 : 0;
      self.cards.forEach(function (card, col) {
        var x0 = Math.round(col * cw), x1 = Math.round((col + 1) * cw) - gap;
        for (var c = 0; c < 32; c++) {
          var v = values ? values[crate * 512 + card * 32 + c] : null;
          var y0 = Math.round((31 - c) * ch), y1 = Math.round((32 - c) * ch) - gap;
          ctx.fillStyle = v === null || v === undefined ? nodata : colour(v);
          ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
        }
      });
    });
  };

  CrateMap.prototype.redraw = function () { if (this.colour) { this.draw(this.values, this.colour); } };

  CrateMap.prototype.select = function (crate) {
    Object.keys(this.canvases).forEach(function (c) {
      this.canvases[c].parentNode.classList.toggle("selected", String(c) === String(crate));
    }, this);
  };

  /* A horizontal colour legend on a canvas. */
  function legend(canvas, colour, lo, hi) {
    var ctx = canvas.getContext("2d");
    canvas.width = 200;
    canvas.height = 10;
    for (var x = 0; x < 200; x++) {
      ctx.fillStyle = colour(lo + (hi - lo) * x / 199);
      ctx.fillRect(x, 0, 1, 10);
    }
  }

  Minard.CrateMap = CrateMap;
  Minard.legend = legend;
}());
