"""The report page's stylesheet and script (plain CSS and JavaScript, inlined in the page)."""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 18px;
       color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 18px; margin: 26px 0 8px; }
.summary { color: #555; margin: 0 0 10px; }
table.scores { border-collapse: collapse; margin: 6px 0; }
table.scores th, table.scores td { border-bottom: 1px solid #ddd; padding: 3px 10px;
                                   text-align: right; }
table.scores th:first-child, table.scores td:first-child { text-align: left; }
table.scores td.best { font-weight: 700; background: #eef6ee; }
table.scores tr.group td { font-weight: 600; background: #f4f4f4; text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.chart { width: 460px; max-width: 100%; background: #fff; border: 1px solid #eee; }
.chart .chart-title { font-size: 13px; font-weight: 600; text-anchor: middle; }
.chart .tick { font-size: 10px; fill: #444; } .chart .axis { font-size: 11px; fill: #333; }
.chart .legend { font-size: 11px; } .chart .grid { stroke: #eee; }
table.confusion td { width: 90px; height: 44px; text-align: center; border: 1px solid #ccc; }
.controls { position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 2;
            border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: 12px;
            align-items: center; }
.gallery { display: flex; flex-direction: column; gap: 10px; margin-top: 10px; }
.study { display: grid; grid-template-columns: 460px 1fr; gap: 12px; border: 1px solid #ddd;
         border-radius: 6px; padding: 8px; content-visibility: auto;
         contain-intrinsic-size: 260px; }
.study.bad { border-left: 5px solid #d62728; } .study.good { border-left: 5px solid #2ca02c; }
.views { display: flex; gap: 6px; }
.view { position: relative; width: 224px; height: 224px; background: #111; }
.view img, .view canvas { position: absolute; left: 0; top: 0; width: 224px; height: 224px;
                          object-fit: contain; }
.view .caption { position: absolute; bottom: 2px; left: 4px; color: #fff; font-size: 11px;
                 text-shadow: 0 0 2px #000; }
.texts dt { font-weight: 600; margin-top: 4px; } .texts dd { margin: 0 0 2px 0; }
.word { cursor: pointer; padding: 0 1px; border-radius: 3px; }
.word.active { background: #ffd54f; }
.labels span { display: inline-block; margin-right: 10px; font-size: 12px; color: #333; }
.tag { border-radius: 3px; padding: 0 5px; font-size: 12px; }
.tag.abnormal { background: #fde0dc; } .tag.normal { background: #e0f2e9; }
.hint { color: #666; font-size: 12px; }
"""

SCRIPT = """
(function () {
  const attention = JSON.parse(document.getElementById('attention-data').textContent);
  const gallery = document.getElementById('gallery');
  const cards = Array.from(gallery.querySelectorAll('.study'));
  const controls = {
    reference: document.getElementById('filter-reference'),
    label: document.getElementById('filter-label'),
    sort: document.getElementById('sort'),
  };
  const count = document.getElementById('shown-count');

  function apply() {
    const [key, direction] = controls.sort.value.split(':');
    const sign = direction === 'desc' ? -1 : 1;
    const sorted = cards.slice().sort((a, b) =>
      sign * (parseFloat(a.dataset[key]) - parseFloat(b.dataset[key])) ||
      parseFloat(a.dataset.uid) - parseFloat(b.dataset.uid));
    let shown = 0;
    for (const card of sorted) {
      const visible =
        (controls.reference.value === 'all' || card.dataset.reference === controls.reference.value) &&
        (controls.label.value === 'all' || card.dataset.label === controls.label.value);
      card.style.display = visible ? '' : 'none';
      if (visible) shown += 1;
      gallery.appendChild(card);
    }
    count.textContent = shown;
  }
  for (const element of Object.values(controls)) element.addEventListener('change', apply);
  for (const link of document.querySelectorAll('[data-preset]')) {
    link.addEventListener('click', (event) => {
      event.preventDefault();
      controls.reference.value = 'all';
      controls.label.value = 'all';
      controls.sort.value = link.dataset.preset;
      apply();
      gallery.scrollIntoView();
    });
  }

  // Attention heat-maps: an "inferno"-like ramp, alpha-blended over the image on a canvas.
  const ramp = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  function colour(v) {
    const x = Math.min(Math.max(v, 0), 1) * (ramp.length - 1);
    const i = Math.min(Math.floor(x), ramp.length - 2), f = x - i;
    return ramp[i].map((c, k) => Math.round(c + f * (ramp[i + 1][k] - c)));
  }
  function draw(card, row) {
    const data = attention[card.dataset.uid];
    if (!data) return;
    const side = data.side, regions = side * side;
    const weights = row === null
      ? data.maps[0].map((_, j) => data.maps.reduce((s, m) => s + m[j], 0) / data.maps.length)
      : data.maps[row];
    const peak = Math.max(...weights) || 1;
    card.querySelectorAll('canvas').forEach((canvas, view) => {
      const small = document.createElement('canvas');
      small.width = side; small.height = side;
      const context = small.getContext('2d');
      const pixels = context.createImageData(side, side);
      for (let r = 0; r < regions; r++) {
        const v = weights[view * regions + r] / peak;
        const [red, green, blue] = colour(v);
        pixels.data.set([red, green, blue, Math.round(25 + 175 * v)], r * 4);
      }
      context.putImageData(pixels, 0, 0);
      const target = canvas.getContext('2d');
      target.clearRect(0, 0, canvas.width, canvas.height);
      if (canvas.dataset.empty === '1') return;
      target.imageSmoothingEnabled = true;
      target.drawImage(small, 0, 0, canvas.width, canvas.height);
    });
  }
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting && !entry.target.dataset.drawn) {
        entry.target.dataset.drawn = '1';
        draw(entry.target, null);
      }
    }
  }, {rootMargin: '300px'});
  for (const card of cards) {
    if (!attention[card.dataset.uid]) continue;
    observer.observe(card);
    const words = card.querySelectorAll('.word');
    words.forEach((word) => {
      const pick = () => {
        words.forEach((w) => w.classList.toggle('active', w === word && !word.classList.contains('active')));
        draw(card, word.classList.contains('active') ? parseInt(word.dataset.row, 10) : null);
      };
      word.addEventListener('click', pick);
      word.addEventListener('mouseenter', () => draw(card, parseInt(word.dataset.row, 10)));
      word.addEventListener('mouseleave', () => {
        const active = card.querySelector('.word.active');
        draw(card, active ? parseInt(active.dataset.row, 10) : null);
      });
    });
  }
  apply();
  // The first cards in the initial order (worst first) are drawn at once, the rest on sight.
  for (const card of Array.from(gallery.children).slice(0, 12)) {
    if (attention[card.dataset.uid]) { card.dataset.drawn = '1'; draw(card, null); }
  }
  document.body.dataset.ready = '1';
})();
"""
