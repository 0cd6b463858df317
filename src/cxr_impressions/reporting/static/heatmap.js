// Attention heat-maps, one script for two pages: the report inlines it, and `cxr serve` serves
// it as /static/heatmap.js. Weights are one row per word of 2 * side * side region weights (the
// frontal view's regions, then the lateral's); each view's are coloured by the ramp (ramp.json's
// anchors, as the report's PNGs) and alpha-blended over the image below the canvas.
window.cxrHeatmap = (function () {
  'use strict';
  // The ramp's colour at v in [0, 1], interpolated between its anchors.
  function colour(ramp, v) {
    const x = Math.min(Math.max(v, 0), 1) * (ramp.length - 1);
    const i = Math.min(Math.floor(x), ramp.length - 2), f = x - i;
    return ramp[i].map((c, k) => Math.round(c + f * (ramp[i + 1][k] - c)));
  }
  // Row `row` of `maps`, or with `row` null the mean of the first `rows` rows (all by default).
  function weights(maps, row, rows) {
    if (row !== null) return maps[row];
    const chosen = maps.slice(0, rows === undefined ? maps.length : rows);
    return chosen[0].map((_, j) => chosen.reduce((s, m) => s + m[j], 0) / chosen.length);
  }
  function clear(canvas) {
    canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  }
  // Draw view `view` (0 frontal, 1 lateral) of `values` on `canvas`, stretched over `rect`
  // ([x, y, width, height], the whole canvas by default), scaled so that the peak over both
  // views is the ramp's top.
  function draw(canvas, ramp, side, values, view, rect) {
    const regions = side * side;
    const peak = Math.max(...values) || 1;
    const small = document.createElement('canvas');
    small.width = side; small.height = side;
    const context = small.getContext('2d');
    const pixels = context.createImageData(side, side);
    for (let r = 0; r < regions; r++) {
      const v = values[view * regions + r] / peak;
      const [red, green, blue] = colour(ramp, v);
      pixels.data.set([red, green, blue, Math.round(25 + 175 * v)], r * 4);
    }
    context.putImageData(pixels, 0, 0);
    clear(canvas);
    const target = canvas.getContext('2d');
    target.imageSmoothingEnabled = true;
    const [x, y, width, height] = rect || [0, 0, canvas.width, canvas.height];
    target.drawImage(small, x, y, width, height);
  }
  return {colour, weights, clear, draw};
})();
