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

  // Attention heat-maps (heatmap.js, shared with `cxr serve`'s page), over the thumbnails.
  const ramp = JSON.parse(document.getElementById('ramp-data').textContent);
  function draw(card, row) {
    const data = attention[card.dataset.uid];
    if (!data) return;
    const values = cxrHeatmap.weights(data.maps, row);
    card.querySelectorAll('canvas').forEach((canvas, view) => {
      if (canvas.dataset.empty === '1') cxrHeatmap.clear(canvas);
      else cxrHeatmap.draw(canvas, ramp, data.side, values, view);
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
