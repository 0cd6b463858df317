// The page of `cxr serve`: pick two views, post them to /v1/predict?explain=1, show the
// impression and labels, and each word's attention as a heat-map in the report's colours.
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const VIEWS = ['frontal', 'lateral'];
  const files = {frontal: null, lateral: null};
  let ramp = [[0, 0, 0], [255, 255, 255]];
  let model = null;
  let attention = null;

  function status(text, state) {
    $('status').textContent = text;
    document.body.dataset.state = state;
  }
  function auth() {
    const token = $('token').value.trim();
    return token ? {Authorization: 'Bearer ' + token} : {};
  }
  async function errorText(response) {
    try { return (await response.json()).error || response.statusText; }
    catch (e) { return response.status + ' ' + response.statusText; }
  }

  // Heat-maps by heatmap.js, the report's script, in the report's colours (ramp.json).
  function clearHeat() {
    document.querySelectorAll('canvas.heat').forEach(cxrHeatmap.clear);
  }
  function draw(row) {
    if (!attention) return;
    // Away from the words, the mean over the words (the last row is the end token's).
    const values = cxrHeatmap.weights(attention.maps, row,
                                      Math.max(attention.words.length - 1, 1));
    VIEWS.forEach((view, v) => {
      const canvas = document.querySelector(`.view[data-view="${view}"] canvas.heat`);
      if (!files[view] || v >= attention.used) { cxrHeatmap.clear(canvas); return; }
      let rect;  // the whole canvas ...
      if (model && model.resize === 'pad') {
        // ... but the model saw a padded image letterboxed into a square: draw over that.
        const img = document.querySelector(`.view[data-view="${view}"] img`);
        const scale = Math.min(canvas.width / img.naturalWidth, canvas.height / img.naturalHeight);
        const size = Math.max(img.naturalWidth, img.naturalHeight) * scale;
        rect = [(canvas.width - size) / 2, (canvas.height - size) / 2, size, size];
      }
      cxrHeatmap.draw(canvas, ramp, attention.grid, values, v, rect);
    });
  }

  function pick(view, file) {
    if (!file) return;
    files[view] = file;
    const box = $('drop-' + view);
    const img = box.querySelector('img');
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(file);
    img.hidden = false;
    box.classList.add('filled');
    attention = null;
    clearHeat();
    $('result').hidden = true;
    $('run').disabled = !files.frontal;
    status(files.frontal ? 'ready' : 'pick a frontal image', 'idle');
  }

  function render(body) {
    const impression = $('impression');
    impression.textContent = '';
    body.words.forEach((word, i) => {
      const span = document.createElement('span');
      span.className = 'word';
      span.textContent = word;
      span.dataset.row = String(i);
      span.addEventListener('mouseenter', () => draw(i));
      span.addEventListener('mouseleave', () => draw(null));
      impression.append(span, ' ');
    });
    if (!body.words.length) impression.textContent = '(empty impression)';
    const labels = $('labels');
    labels.textContent = '';
    const abnormal = body.labels.abnormal;
    if (abnormal) {
      const li = document.createElement('li');
      li.innerHTML = '<b></b> <span class="p"></span>';
      li.querySelector('b').textContent = abnormal.predicted ? 'abnormal' : 'normal';
      li.querySelector('.p').textContent =
        `P(abnormal) = ${abnormal.probability.toFixed(3)}, threshold ${abnormal.threshold.toFixed(3)}`;
      labels.append(li);
    }
    const li = document.createElement('li');
    li.textContent = 'findings named in the impression: ' +
      (body.labels.findings.length ? body.labels.findings.join(', ') : 'none');
    labels.append(li);
    $('model-line').textContent = `model ${body.model.sha256.slice(0, 12)} (${body.model.kind}, ` +
      `${body.model.precision}), ${body.decoding.method} ${body.decoding.beam_size}, ` +
      `${body.seconds.toFixed(2)} s`;
    $('hover-hint').hidden = !body.attention;
    attention = body.attention ? {...body.attention, used: body.views.length} : null;
    $('result').hidden = false;
    draw(null);
  }

  async function run() {
    if (!files.frontal) return;
    $('run').disabled = true;
    status('writing the impression ...', 'running');
    try {
      if (!model) {
        const response = await fetch('/v1/model', {headers: auth()});
        if (!response.ok) throw new Error(await errorText(response));
        model = await response.json();
        VIEWS.forEach((v) => $('drop-' + v).classList.toggle('pad', model.resize === 'pad'));
      }
      const form = new FormData();
      VIEWS.forEach((view) => { if (files[view]) form.append(view, files[view], files[view].name); });
      const title = $('exam-title').value.trim();
      if (title) form.append('exam_title', title);
      const response = await fetch('/v1/predict' + (model.explains ? '?explain=1' : ''),
                                   {method: 'POST', body: form, headers: auth()});
      if (!response.ok) throw new Error(await errorText(response));
      render(await response.json());
      status('done', 'done');
    } catch (error) {
      status(error.message, 'error');
    } finally {
      $('run').disabled = !files.frontal;
    }
  }

  VIEWS.forEach((view) => {
    const box = $('drop-' + view), input = $(view);
    box.addEventListener('click', () => input.click());
    box.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') input.click(); });
    input.addEventListener('change', () => pick(view, input.files[0]));
    box.addEventListener('dragover', (e) => { e.preventDefault(); box.classList.add('over'); });
    box.addEventListener('dragleave', () => box.classList.remove('over'));
    box.addEventListener('drop', (e) => {
      e.preventDefault();
      box.classList.remove('over');
      pick(view, e.dataTransfer.files[0]);
    });
  });
  $('run').addEventListener('click', run);
  $('clear').addEventListener('click', () => {
    VIEWS.forEach((view) => {
      files[view] = null;
      const box = $('drop-' + view), img = box.querySelector('img');
      if (img.src) URL.revokeObjectURL(img.src);
      img.removeAttribute('src');
      img.hidden = true;
      box.classList.remove('filled');
      $(view).value = '';
    });
    attention = null;
    clearHeat();
    $('result').hidden = true;
    $('run').disabled = true;
    status('', 'idle');
  });

  Promise.all([
    fetch('/static/ramp.json').then((r) => r.json()).then((r) => { ramp = r.anchors; }),
    fetch('/healthz').then((r) => r.json()).then((h) => { $('token-row').hidden = !h.token_required; }),
  ]).catch((e) => status('cannot reach the server: ' + e.message, 'error'))
    .finally(() => { document.body.dataset.ready = '1'; });
})();
