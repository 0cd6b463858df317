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
  const ramp = JSON.parse(document.getElementById('ramp-data').textContent);
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
