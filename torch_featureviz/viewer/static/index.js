// The featureviz tab: plain ES module, no build step, no network beyond this plugin's routes.
// TensorBoard's plugin_entry.html imports this module and calls render().

const BASE = new URL('../', import.meta.url);  // .../data/plugin/featureviz/
const VIEWS = ['filters', 'hook', 'probe', 'chain'];
const VIEW_TITLES = {
  filters: 'filters', hook: 'training batch', probe: 'probe', chain: 'chain',
};
const STATS = ['mean', 'std', 'near_zero', 'dead_channels'];

const state = {
  runs: {},          // run -> {models: [...]}
  run: null,
  compare: '',       // second run shown beside, or ''
  selected: [],      // [{prefix, layer}]
  details: new Map(), // `${run}\u0000${prefix}\u0000${layer}` -> /layer payload
  steps: [],         // slider steps (union over what is shown)
  step: null,
  tile: null,        // {run, prefix, layer, view, tag, channel}
  filter: '',
};

function url(route, params = {}) {
  const u = new URL(route, BASE);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, String(v));
  return u.toString();
}

async function getJSON(route, params) {
  const response = await fetch(url(route, params));
  if (!response.ok) throw new Error(`${route}: HTTP ${response.status}`);
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const svgNS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}) {
  const node = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// Largest value in sorted `steps` that is <= step, or null.
function atOrBefore(steps, step) {
  let lo = 0, hi = steps.length - 1, found = null;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] <= step) { found = steps[mid]; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

const key = (run, prefix, layer) => `${run}\u0000${prefix}\u0000${layer}`;
const model = (run, prefix) => (state.runs[run]?.models || []).find((m) => m.prefix === prefix);
const runsShown = () => [state.run, state.compare].filter((r, i) => r && (i === 0 || r !== state.run));

async function detail(run, prefix, layer) {
  const k = key(run, prefix, layer);
  if (!state.details.has(k)) {
    if (!model(run, prefix)?.layers.some((x) => x.layer === layer)) return null;
    state.details.set(k, await getJSON('layer', { run, prefix, layer }));
  }
  return state.details.get(k);
}

// ---------------------------------------------------------------------------- the step slider
function recomputeSteps() {
  const all = new Set();
  for (const { prefix, layer } of state.selected) {
    for (const run of runsShown()) {
      const d = state.details.get(key(run, prefix, layer));
      if (!d) continue;
      for (const v of Object.values(d.views)) v.steps.forEach((s) => all.add(s));
      for (const series of Object.values(d.stats)) series.forEach(([s]) => all.add(s));
    }
  }
  if (!all.size) for (const s of state.heatSteps || []) all.add(s);
  state.steps = [...all].sort((a, b) => a - b);
  const slider = document.getElementById('fv-slider');
  slider.max = Math.max(0, state.steps.length - 1);
  slider.disabled = state.steps.length < 2;
  if (state.step == null || !state.steps.length) state.step = state.steps.at(-1) ?? null;
  else state.step = atOrBefore(state.steps, state.step) ?? state.steps[0];
  slider.value = Math.max(0, state.steps.indexOf(state.step));
}

function setStep(step) {
  state.step = step;
  const slider = document.getElementById('fv-slider');
  slider.value = Math.max(0, state.steps.indexOf(step));
  updateStepViews();
}

function updateStepViews() {
  document.getElementById('fv-step').textContent = state.step == null ? 'no steps' : `step ${state.step}`;
  document.body.dataset.step = state.step ?? '';
  for (const img of document.querySelectorAll('img.fv-grid')) showPanelStep(img);
  for (const mark of document.querySelectorAll('.fv-mark')) placeMark(mark);
  drawHeatMarks();
}

function showPanelStep(img) {
  const steps = JSON.parse(img.dataset.steps);
  const shown = state.step == null ? null : atOrBefore(steps, state.step);
  const caption = img.closest('figure').querySelector('.fv-when');
  if (shown == null) {
    img.removeAttribute('src');
    img.dataset.step = '';
    img.dataset.loadedStep = '';
    img.classList.add('fv-empty');
    caption.textContent = steps.length ? `nothing logged at or before step ${state.step}` : 'not logged';
    return;
  }
  img.classList.remove('fv-empty');
  caption.textContent = shown === state.step ? `step ${shown}` : `step ${shown} (nearest earlier)`;
  caption.classList.toggle('fv-earlier', shown !== state.step);
  if (img.dataset.step !== String(shown)) {
    img.dataset.step = String(shown);
    img.src = url('image', { run: img.dataset.run, tag: img.dataset.tag, step: shown });
  }
}

// ---------------------------------------------------------------------------- the layer index
function renderIndex() {
  const list = document.getElementById('fv-layers');
  list.replaceChildren();
  const models = state.runs[state.run]?.models || [];
  const needle = state.filter.toLowerCase();
  for (const m of models) {
    const box = el('div', { class: 'fv-model' });
    if (models.length > 1 || m.prefix) box.append(el('h4', { text: m.prefix || '(no prefix)' }));
    let group = null, groupName = null;
    for (const entry of m.layers) {
      if (needle && !entry.layer.toLowerCase().includes(needle)) continue;
      if (entry.group !== groupName || group == null) {
        groupName = entry.group;
        group = el('details', { open: true, class: 'fv-group' },
          el('summary', { text: groupName || '(top level)' }));
        box.append(group);
      }
      const on = state.selected.some((s) => s.prefix === m.prefix && s.layer === entry.layer);
      const views = VIEWS.filter((v) => entry.views[v]).map((v) => v[0]).join('');
      group.append(el('button', {
        class: `fv-layer${on ? ' fv-on' : ''}`, 'data-layer': entry.layer, 'data-prefix': m.prefix,
        title: `${entry.layer}: ${VIEWS.filter((v) => entry.views[v]).join(', ')}`,
        onclick: () => toggleLayer(m.prefix, entry.layer),
      }, el('span', { text: entry.layer.slice(groupName ? groupName.length + 1 : 0) }),
      el('small', { text: views })));
    }
    list.append(box);
  }
}

async function toggleLayer(prefix, layer, { only = false, step = null } = {}) {
  const at = state.selected.findIndex((s) => s.prefix === prefix && s.layer === layer);
  if (only) state.selected = [{ prefix, layer }];
  else if (at >= 0) state.selected.splice(at, 1);
  else state.selected.push({ prefix, layer });
  if (step != null) state.step = step;
  await renderLayers();
  renderIndex();
}

// ---------------------------------------------------------------------------- one layer card
function panel(run, prefix, layer, view, info) {
  const img = el('img', {
    class: 'fv-grid', alt: `${view} of ${layer}`, 'data-run': run, 'data-tag': info.tag,
    'data-view': view, 'data-steps': JSON.stringify(info.steps), draggable: false,
  });
  img.addEventListener('load', () => { img.dataset.loadedStep = img.dataset.step; });
  img.addEventListener('click', (ev) => openTile(ev, img, { run, prefix, layer, view, tag: info.tag }));
  const gif = el('a', {
    class: 'fv-gif', text: 'GIF', title: 'time-lapse of this panel over training',
    href: url('timelapse', { run, tag: info.tag }), download: '',
  });
  return el('figure', { class: 'fv-panel', 'data-view': view },
    el('figcaption', {}, el('b', { text: VIEW_TITLES[view] }), ' ', el('span', { class: 'fv-when' }), ' ', gif),
    img);
}

function chart(stat, seriesByRun) {
  const w = 200, h = 56, pad = 3;
  let lo = Infinity, hi = -Infinity, first = Infinity, last = -Infinity;
  for (const series of Object.values(seriesByRun)) for (const [s, v] of series) {
    lo = Math.min(lo, v); hi = Math.max(hi, v); first = Math.min(first, s); last = Math.max(last, s);
  }
  if (!isFinite(lo)) return null;
  if (hi === lo) { hi += 0.5; lo -= 0.5; }
  const x = (s) => pad + (last === first ? 0.5 : (s - first) / (last - first)) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  const box = svg('svg', { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: 'fv-chart' });
  Object.entries(seriesByRun).forEach(([, series], i) => {
    box.append(svg('polyline', {
      points: series.map(([s, v]) => `${x(s).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
      class: `fv-line fv-line${i}`,
    }));
  });
  const mark = svg('line', { y1: 0, y2: h, class: 'fv-mark' });
  mark.dataset.first = first; mark.dataset.last = last; mark.dataset.w = w; mark.dataset.pad = pad;
  box.append(mark);
  const value = el('span', { class: 'fv-value' });
  value.dataset.series = JSON.stringify(seriesByRun);
  return el('div', { class: 'fv-stat' }, el('div', {}, el('b', { text: stat }), ' ', value), box);
}

function placeMark(mark) {
  const first = +mark.dataset.first, last = +mark.dataset.last, w = +mark.dataset.w, pad = +mark.dataset.pad;
  const s = state.step ?? last;
  const xs = pad + (last === first ? 0.5 : (Math.min(Math.max(s, first), last) - first) / (last - first)) * (w - 2 * pad);
  mark.setAttribute('x1', xs); mark.setAttribute('x2', xs);
  const value = mark.closest('.fv-stat').querySelector('.fv-value');
  const parts = [];
  for (const [run, series] of Object.entries(JSON.parse(value.dataset.series))) {
    const steps = series.map(([t]) => t);
    const at = atOrBefore(steps, s);
    if (at != null) parts.push(`${runsShown().length > 1 ? run + ': ' : ''}${series[steps.indexOf(at)][1].toPrecision(3)}`);
  }
  value.textContent = parts.join('  ');
}

async function renderLayers() {
  const host = document.getElementById('fv-cards');
  const cards = [];
  for (const { prefix, layer } of state.selected) {
    const runs = runsShown();
    const details = {};
    for (const run of runs) details[run] = await detail(run, prefix, layer);
    const rows = runs.map((run) => {
      const d = details[run];
      const row = el('div', { class: 'fv-row', 'data-run': run },
        el('div', { class: 'fv-runname', text: runs.length > 1 ? run : '' }));
      if (!d) { row.append(el('em', { text: `${run} has no layer ${layer}` })); return row; }
      for (const view of VIEWS) if (d.views[view]) row.append(panel(run, prefix, layer, view, d.views[view]));
      return row;
    });
    const stats = el('div', { class: 'fv-stats' });
    const names = new Set(STATS);
    for (const run of runs) Object.keys(details[run]?.stats || {}).forEach((s) => names.add(s));
    for (const stat of names) {
      const byRun = {};
      for (const run of runs) if (details[run]?.stats[stat]) byRun[run] = details[run].stats[stat];
      const c = chart(stat, byRun);
      if (c) stats.append(c);
    }
    const close = el('button', { class: 'fv-close', text: '×', title: 'close', onclick: () => toggleLayer(prefix, layer) });
    cards.push(el('section', { class: 'fv-card', 'data-layer': layer, 'data-prefix': prefix },
      el('h3', {}, el('span', { text: (prefix ? prefix + ' / ' : '') + layer }), close),
      ...rows, stats, el('div', { class: 'fv-tile' })));
  }
  host.replaceChildren(...cards);
  if (!cards.length) host.append(el('p', { class: 'fv-hint', text: 'Pick a layer on the left, or a cell of the dead-channel map.' }));
  recomputeSteps();
  updateStepViews();
}

// ---------------------------------------------------------------------------- a tile, larger
const geometries = new Map();

async function openTile(ev, img, where) {
  if (!img.dataset.step) return;
  const gkey = `${where.run}\u0000${where.tag}\u0000${img.dataset.step}`;
  if (!geometries.has(gkey)) geometries.set(gkey, await getJSON('tiles', { run: where.run, tag: where.tag, step: img.dataset.step }));
  const g = geometries.get(gkey);
  const rect = img.getBoundingClientRect();
  const px = (ev.clientX - rect.left) * (img.naturalWidth / rect.width);
  const py = (ev.clientY - rect.top) * (img.naturalHeight / rect.height);
  const col = Math.floor((px - g.padding) / (g.tile_width + g.padding));
  const row = Math.floor((py - g.padding) / (g.tile_height + g.padding));
  const index = row * g.cols + col;
  if (col < 0 || col >= g.cols || row < 0 || index >= g.count) return;
  // The monitor's channels="top"/"changed" picks channels: tile i is then channels[i].
  const channel = g.channels && index < g.channels.length ? g.channels[index] : index;
  state.tile = { ...where, channel, index };
  const left = g.padding + col * (g.tile_width + g.padding), top = g.padding + row * (g.tile_height + g.padding);
  const scale = Math.max(1, Math.floor(192 / Math.max(g.tile_width, g.tile_height)));
  const big = el('canvas', { class: 'fv-big', width: g.tile_width * scale, height: g.tile_height * scale });
  const c2d = big.getContext('2d');
  c2d.imageSmoothingEnabled = false;
  c2d.drawImage(img, left, top, g.tile_width, g.tile_height, 0, 0, big.width, big.height);
  const strip = el('img', { class: 'fv-strip', alt: `channel ${channel} over steps` });
  const stripSteps = el('div', { class: 'fv-strip-steps' });
  const host = img.closest('.fv-card').querySelector('.fv-tile');
  const close = el('button', { class: 'fv-close', text: '×', onclick: () => { host.replaceChildren(); state.tile = null; } });
  host.replaceChildren(el('div', { class: 'fv-tile-head' },
    el('b', { text: `${VIEW_TITLES[where.view]} · channel ${channel}${channel === index ? '' : ` (tile ${index})`}` }), ` · ${where.run} · step ${img.dataset.step}`, close),
  el('div', { class: 'fv-tile-body' }, big, el('div', { class: 'fv-strip-box' }, strip, stripSteps)));
  host.dataset.channel = channel;
  const response = await fetch(url('strip', { run: where.run, tag: where.tag, channel, max: 16 }));
  if (!response.ok) { stripSteps.textContent = `strip: HTTP ${response.status}`; return; }
  const steps = (response.headers.get('X-Featureviz-Steps') || '').split(',').filter(Boolean);
  strip.src = URL.createObjectURL(await response.blob());
  strip.style.height = `${Math.max(48, Math.min(96, g.tile_height * scale / 2))}px`;
  stripSteps.textContent = `steps ${steps.join(', ')}`;
  host.dataset.stripSteps = steps.join(',');
}

// ---------------------------------------------------------------------------- dead-channel map
async function renderHeatmaps() {
  const host = document.getElementById('fv-heat');
  host.replaceChildren(el('h3', { text: 'Dead channels: layers × steps (click a cell to open)' }));
  state.heatSteps = [];
  for (const m of state.runs[state.run]?.models || []) {
    const data = await getJSON('deadmap', { run: state.run, prefix: m.prefix });
    if (!data.layers.length) continue;
    data.steps.forEach((s) => state.heatSteps.push(s));
    const cw = Math.max(1, Math.min(24, Math.floor(720 / data.steps.length)));
    const ch = Math.max(3, Math.min(16, Math.floor(480 / data.layers.length)));
    const canvas = el('canvas', { class: 'fv-heatmap', width: data.steps.length * cw, height: data.layers.length * ch });
    canvas.dataset.prefix = m.prefix;
    canvas.heat = { ...data, cw, ch };
    const c2d = canvas.getContext('2d');
    data.values.forEach((row, i) => row.forEach((v, j) => {
      c2d.fillStyle = v == null ? '#ddd' : `hsl(0, ${Math.round(20 + 70 * v)}%, ${Math.round(96 - 56 * v)}%)`;
      c2d.fillRect(j * cw, i * ch, cw, ch);
    }));
    canvas.addEventListener('click', (ev) => {
      const rect = canvas.getBoundingClientRect();
      const j = Math.floor((ev.clientX - rect.left) * canvas.width / rect.width / cw);
      const i = Math.floor((ev.clientY - rect.top) * canvas.height / rect.height / ch);
      if (i < 0 || i >= data.layers.length || j < 0 || j >= data.steps.length) return;
      toggleLayer(m.prefix, data.layers[i], { only: true, step: data.steps[j] });
    });
    canvas.addEventListener('mousemove', (ev) => {
      const rect = canvas.getBoundingClientRect();
      const j = Math.floor((ev.clientX - rect.left) * canvas.width / rect.width / cw);
      const i = Math.floor((ev.clientY - rect.top) * canvas.height / rect.height / ch);
      const v = data.values[i]?.[j];
      canvas.title = i >= 0 && j >= 0 && data.layers[i] != null
        ? `${data.layers[i]} · step ${data.steps[j]} · dead ${v == null ? '—' : (100 * v).toFixed(0) + '%'}` : '';
    });
    const mark = el('div', { class: 'fv-heatmark' });
    host.append(el('div', { class: 'fv-heatbox' },
      m.prefix ? el('h4', { text: m.prefix }) : null,
      el('div', { class: 'fv-heatrow' },
        ch >= 10 ? el('div', { class: 'fv-heatnames' }, ...data.layers.map((name) => el('div', { text: name, style: `height:${ch}px;line-height:${ch}px` }))) : null,
        el('div', { class: 'fv-heatwrap' }, canvas, mark)),
      el('div', { class: 'fv-heatlegend', text: `${data.layers.length} layers (model order, top to bottom) · steps ${data.steps[0]}–${data.steps.at(-1)} · pale: 0 % dead, red: 100 %` })));
  }
  state.heatSteps = [...new Set(state.heatSteps)].sort((a, b) => a - b);
  if (host.children.length === 1) host.append(el('p', { class: 'fv-hint', text: 'No dead_channels statistics in this run.' }));
}

function drawHeatMarks() {
  for (const canvas of document.querySelectorAll('canvas.fv-heatmap')) {
    const { steps, cw } = canvas.heat;
    const at = state.step == null ? null : atOrBefore(steps, state.step);
    const mark = canvas.parentElement.querySelector('.fv-heatmark');
    mark.style.display = at == null ? 'none' : 'block';
    if (at != null) mark.style.left = `${steps.indexOf(at) * cw}px`;
    mark.style.width = `${cw}px`;
  }
}

// ---------------------------------------------------------------------------- page
async function chooseRun(run) {
  state.run = run;
  state.details.clear();
  const models = state.runs[run]?.models || [];
  state.selected = state.selected.filter((s) => model(run, s.prefix)?.layers.some((x) => x.layer === s.layer));
  if (!state.selected.length && models.length && models[0].layers.length) {
    state.selected = [{ prefix: models[0].prefix, layer: models[0].layers[0].layer }];
  }
  renderCompareOptions();
  renderIndex();
  await Promise.all([renderLayers(), renderHeatmaps()]);
  if (!state.selected.length) { recomputeSteps(); updateStepViews(); }
}

function renderCompareOptions() {
  const select = document.getElementById('fv-compare');
  select.replaceChildren(el('option', { value: '', text: '(none)' }),
    ...Object.keys(state.runs).filter((r) => r !== state.run).map((r) => el('option', { value: r, text: r })));
  if (state.compare === state.run || !(state.compare in state.runs)) state.compare = '';
  select.value = state.compare;
}

function stylesheet() {
  const link = el('link', { rel: 'stylesheet', href: new URL('style.css', import.meta.url).toString() });
  document.head.append(link);
}

export async function render() {
  stylesheet();
  const runSelect = el('select', { id: 'fv-run', onchange: (ev) => chooseRun(ev.target.value) });
  const compare = el('select', {
    id: 'fv-compare',
    onchange: async (ev) => { state.compare = ev.target.value; state.details.clear(); await renderLayers(); },
  });
  const slider = el('input', {
    id: 'fv-slider', type: 'range', min: 0, max: 0, step: 1, value: 0,
    oninput: (ev) => setStep(state.steps[+ev.target.value]),
  });
  const filter = el('input', {
    id: 'fv-filter', type: 'search', placeholder: 'filter layers…',
    oninput: (ev) => { state.filter = ev.target.value; renderIndex(); },
  });
  document.body.replaceChildren(
    el('header', { class: 'fv-bar' },
      el('label', {}, 'run ', runSelect), el('label', {}, 'compare with ', compare),
      el('label', { class: 'fv-sliderbox' }, slider, el('span', { id: 'fv-step', text: '' })),
      el('span', { class: 'fv-keys', text: '← → move the step' })),
    el('div', { class: 'fv-main' },
      el('aside', { class: 'fv-index' }, filter, el('div', { id: 'fv-layers' })),
      el('main', { class: 'fv-view' }, el('div', { id: 'fv-cards' }), el('div', { id: 'fv-heat' }))));
  document.addEventListener('keydown', (ev) => {
    if (ev.target instanceof HTMLInputElement && ev.target.type !== 'range') return;
    if (ev.key !== 'ArrowLeft' && ev.key !== 'ArrowRight') return;
    if (ev.target === slider) return;  // the range input moves itself and fires input
    const i = state.steps.indexOf(state.step) + (ev.key === 'ArrowRight' ? 1 : -1);
    if (i >= 0 && i < state.steps.length) { ev.preventDefault(); setStep(state.steps[i]); }
  });
  const index = await getJSON('index');
  state.runs = index.runs;
  const runs = Object.keys(state.runs);
  runSelect.replaceChildren(...runs.map((r) => el('option', { value: r, text: r })));
  if (!runs.length) {
    document.getElementById('fv-cards').append(el('p', { class: 'fv-hint', text: 'No torch_featureviz logs in this log directory yet.' }));
    document.body.dataset.ready = 'true';
    return;
  }
  await chooseRun(runs[0]);
  document.body.dataset.ready = 'true';
}
