// congeal align report: click-to-match correspondences, input <-> aligned toggles, sorting.
// Reads window.CONGEAL_MAPPINGS (mappings.js, written by congealing.report.browser_mappings).
// Points are normalised (x, y) in [-1, 1], x right, y down (congealing.warps' convention).
(function () {
  "use strict";
  var M = window.CONGEAL_MAPPINGS || { kind: "none" };
  var COLOURS = ["#ff1744", "#00e5ff", "#ffea00", "#76ff03", "#d500f9", "#ff9100"];
  var points = []; // {src: image index or -1 for the aligned frame, p: [x, y], colour}

  // ---- transforms: T_i maps input i -> aligned frame (row-major 3x3)
  function apply(T, p) {
    var w = T[6] * p[0] + T[7] * p[1] + T[8];
    return [(T[0] * p[0] + T[1] * p[1] + T[2]) / w, (T[3] * p[0] + T[4] * p[1] + T[5]) / w];
  }
  function inverse(T) {
    var a = T[0], b = T[1], c = T[2], d = T[3], e = T[4], f = T[5], g = T[6], h = T[7], i = T[8];
    var A = e * i - f * h, B = -(d * i - f * g), C = d * h - e * g;
    var det = a * A + b * B + c * C;
    return [A / det, -(b * i - c * h) / det, (b * f - c * e) / det,
            B / det, (a * i - c * g) / det, -(a * f - c * d) / det,
            C / det, -(a * h - b * g) / det, (a * e - b * d) / det];
  }
  var inverses = M.kind === "transforms" ? M.transforms.map(inverse) : null;

  // ---- grids: grid_i maps the aligned frame -> input i (h x w cells, flat x, y pairs)
  function cellCentre(k) {
    var col = k % M.w, row = Math.floor(k / M.w);
    return [(2 * col + 1) / M.w - 1, (2 * row + 1) / M.h - 1];
  }
  function gridInverse(i, p) { // nearest grid value, as congealing.warps.invert_grid_points
    var g = M.grids[i], best = 0, bestD = Infinity;
    for (var k = 0; k < M.h * M.w; k++) {
      var dx = g[2 * k] - p[0], dy = g[2 * k + 1] - p[1], d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = k; }
    }
    return cellCentre(best);
  }
  function gridSample(j, a) { // bilinear, border padding, align_corners=False (grid_sample)
    var g = M.grids[j];
    var x = Math.min(Math.max(((a[0] + 1) * M.w - 1) / 2, 0), M.w - 1);
    var y = Math.min(Math.max(((a[1] + 1) * M.h - 1) / 2, 0), M.h - 1);
    var x0 = Math.floor(x), y0 = Math.floor(y), x1 = Math.min(x0 + 1, M.w - 1), y1 = Math.min(y0 + 1, M.h - 1);
    var fx = x - x0, fy = y - y0, out = [0, 0];
    for (var c = 0; c < 2; c++) {
      var v00 = g[2 * (y0 * M.w + x0) + c], v01 = g[2 * (y0 * M.w + x1) + c];
      var v10 = g[2 * (y1 * M.w + x0) + c], v11 = g[2 * (y1 * M.w + x1) + c];
      out[c] = (1 - fy) * ((1 - fx) * v00 + fx * v01) + fy * ((1 - fx) * v10 + fx * v11);
    }
    return out;
  }

  // ---- nocs: per-cell canonical 3-D coordinates, nearest cell in, nearest coordinate out
  function cellOf(p) {
    var col = Math.min(M.w - 1, Math.max(0, Math.round(((p[0] + 1) * M.w - 1) / 2)));
    var row = Math.min(M.h - 1, Math.max(0, Math.round(((p[1] + 1) * M.h - 1) / 2)));
    return row * M.w + col;
  }
  function nocsMatch(i, j, p) {
    var k = cellOf(p), s = M.nocs[i], t = M.nocs[j], mask = M.mask[j], best = -1, bestD = Infinity;
    for (var q = 0; q < M.h * M.w; q++) {
      if (!mask[q]) continue;
      var d = 0;
      for (var c = 0; c < 3; c++) { var e = t[3 * q + c] - s[3 * k + c]; d += e * e; }
      if (d < bestD) { bestD = d; best = q; }
    }
    return best < 0 ? null : cellCentre(best);
  }

  function toAligned(i, p) {
    if (M.kind === "transforms") return apply(M.transforms[i], p);
    if (M.kind === "grids") return gridInverse(i, p);
    return null;
  }
  function fromAligned(j, a) {
    if (M.kind === "transforms") return apply(inverses[j], a);
    if (M.kind === "grids") return gridSample(j, a);
    return null;
  }
  // Where one point (clicked on image src, or on the aligned frame when src < 0) lies in every
  // input (by index) and in the aligned frame.
  function locate(point) {
    var n = (M.transforms || M.grids || M.nocs || []).length, inputs = [], aligned = null;
    if (M.kind === "nocs") {
      for (var j = 0; j < n; j++) inputs.push(j === point.src ? point.p : nocsMatch(point.src, j, point.p));
      return { inputs: inputs, aligned: null };
    }
    if (M.kind === "none") return { inputs: [], aligned: null };
    aligned = point.src < 0 ? point.p : toAligned(point.src, point.p);
    for (var k = 0; k < n; k++) inputs.push(k === point.src ? point.p : fromAligned(k, aligned));
    return { inputs: inputs, aligned: aligned };
  }
  // Public for tests and for the curious: image src pixel-free normalised point -> image tgt.
  window.congealTransfer = function (src, tgt, p) { return locate({ src: src, p: p }).inputs[tgt]; };
  window.congealPoints = function () { return points.map(function (q) { return { src: q.src, p: q.p.slice() }; }); };

  function render() {
    var located = points.map(locate);
    var pics = document.querySelectorAll(".pic");
    for (var q = 0; q < pics.length; q++) {
      var pic = pics[q], index = +pic.dataset.index, frame = pic.dataset.frame;
      var old = pic.querySelectorAll(".mark");
      for (var o = 0; o < old.length; o++) old[o].remove();
      for (var k = 0; k < points.length; k++) {
        var where = frame === "input" || M.kind === "nocs" ? located[k].inputs[index] : located[k].aligned;
        if (!where) continue;
        var mark = document.createElement("span");
        mark.className = "mark" + (points[k].src === index && frame === "input" ? " source" : "");
        mark.dataset.point = k;
        mark.style.left = ((where[0] + 1) * 50) + "%";
        mark.style.top = ((where[1] + 1) * 50) + "%";
        mark.style.borderColor = points[k].colour;
        pic.appendChild(mark);
      }
    }
    var status = document.getElementById("status");
    if (status) status.textContent = points.length ? points.length + " point(s) marked" : "";
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target.classList.contains("toggle")) {
      var pic = target.parentNode.querySelector(".pic");
      setFrame(pic, target, pic.dataset.frame === "input" ? "aligned" : "input");
      return;
    }
    var pic = target.closest ? target.closest(".pic") : null;
    if (!pic || M.kind === "none") return;
    var box = pic.getBoundingClientRect();
    var p = [2 * (event.clientX - box.left) / box.width - 1, 2 * (event.clientY - box.top) / box.height - 1];
    var src = pic.dataset.frame === "input" || M.kind === "nocs" ? +pic.dataset.index : -1;
    points.push({ src: src, p: p, colour: COLOURS[points.length % COLOURS.length] });
    render();
  });

  function setFrame(pic, button, frame) {
    var img = pic.querySelector("img");
    pic.dataset.frame = frame;
    img.src = frame === "aligned" ? button.dataset.aligned : button.dataset.input;
    button.textContent = frame === "aligned" ? "show input" : "show " + (button.dataset.label || "aligned");
    render();
  }
  function setAll(frame) {
    var buttons = document.querySelectorAll("button.toggle");
    for (var b = 0; b < buttons.length; b++) setFrame(buttons[b].parentNode.querySelector(".pic"), buttons[b], frame);
  }
  function order(how) {
    var body = document.querySelector("#table tbody");
    if (!body) return;
    var rows = Array.prototype.slice.call(body.rows);
    var higherIsBetter = document.getElementById("table").dataset.scoreBetter !== "lower";
    var score = function (r) { return r.dataset.score === "" ? NaN : +r.dataset.score; };
    rows.sort(function (a, b) {
      if (how === "name") return a.dataset.name < b.dataset.name ? -1 : a.dataset.name > b.dataset.name ? 1 : 0;
      if (how === "input" || (isNaN(score(a)) && isNaN(score(b)))) return +a.dataset.order - +b.dataset.order;
      var worstFirst = (how === "worst") === higherIsBetter;
      return worstFirst ? score(a) - score(b) : score(b) - score(a);
    });
    for (var r = 0; r < rows.length; r++) body.appendChild(rows[r]);
  }
  function on(id, type, handler) { var e = document.getElementById(id); if (e) e.addEventListener(type, handler); }
  on("clear-points", "click", function () { points = []; render(); });
  on("show-all-aligned", "click", function () { setAll("aligned"); });
  on("show-all-inputs", "click", function () { setAll("input"); });
  on("order", "change", function (event) { order(event.target.value); });
  // The page arrives sorted worst-first (congealing.report writes the rows in that order).
})();
