// The geojobs web console: one page, plain JavaScript, talking to the API it is served by.
// Jobs (OGC API - Processes) with live status from the SSE stream, a form generated from the
// process description's JSON Schema, and results drawn from the vector tiles of the layers API.
import * as maplibregl from '../vendor/maplibre-gl/maplibre-gl.mjs';

const API = document.body.dataset.api || '';
const KEY_ITEM = 'geojobs.apiKey';
const FINAL = new Set(['successful', 'failed', 'dismissed']);
const FORMATS = [
  ['gpkg', 'GeoPackage'], ['parquet', 'GeoParquet'], ['fgb', 'FlatGeobuf'],
  ['geojson', 'GeoJSON'], ['csv', 'CSV'],
];
const BACKGROUND = '#eef1f4';

// ArcGIS's renderers where a convention exists. Gi_Bin: the seven confidence classes of Hot
// Spot Analysis; COType: Cluster and Outlier Analysis; the 17 categories of Emerging Hot Spot
// Analysis (category_code 1..8 hot, -1..-8 cold, 0 no pattern).
const RENDERERS = {
  gi_bin: {
    title: 'Gi_Bin', field: 'gi_bin', classes: [
      [3, '#d62f27', 'Hot Spot - 99% Confidence'],
      [2, '#ed7551', 'Hot Spot - 95% Confidence'],
      [1, '#fab984', 'Hot Spot - 90% Confidence'],
      [0, '#f7f7f2', 'Not Significant'],
      [-1, '#c0ccbe', 'Cold Spot - 90% Confidence'],
      [-2, '#849eba', 'Cold Spot - 95% Confidence'],
      [-3, '#4575b5', 'Cold Spot - 99% Confidence'],
    ],
  },
  co_type: {
    title: 'COType', field: 'co_type', classes: [
      ['HH', '#e60000', 'High-High Cluster'],
      ['HL', '#ffa77f', 'High-Low Outlier'],
      ['LH', '#73b2ff', 'Low-High Outlier'],
      ['LL', '#005ce6', 'Low-Low Cluster'],
      [null, '#f7f7f2', 'Not Significant'],
    ],
  },
  category_code: {
    title: 'Emerging hot spot category', field: 'category_code', classes: [
      [1, '#8c0000', 'New Hot Spot'],
      [2, '#b30000', 'Consecutive Hot Spot'],
      [3, '#d7301f', 'Intensifying Hot Spot'],
      [4, '#ef6548', 'Persistent Hot Spot'],
      [5, '#fc8d59', 'Diminishing Hot Spot'],
      [6, '#fdbb84', 'Sporadic Hot Spot'],
      [7, '#fdd49e', 'Oscillating Hot Spot'],
      [8, '#fee8c8', 'Historical Hot Spot'],
      [0, '#f7f7f2', 'No Pattern Detected'],
      [-1, '#08306b', 'New Cold Spot'],
      [-2, '#08519c', 'Consecutive Cold Spot'],
      [-3, '#2171b5', 'Intensifying Cold Spot'],
      [-4, '#4292c6', 'Persistent Cold Spot'],
      [-5, '#6baed6', 'Diminishing Cold Spot'],
      [-6, '#9ecae1', 'Sporadic Cold Spot'],
      [-7, '#c6dbef', 'Oscillating Cold Spot'],
      [-8, '#deebf7', 'Historical Cold Spot'],
    ],
  },
};
const SINGLE = { title: null, field: null, classes: [[null, '#3b82c4', 'Features']] };
const RENDERER_OF_PROCESS = { hotspot: 'gi_bin', outlier: 'co_type', hotspot_timeseries: 'category_code' };

const $ = (selector) => document.querySelector(selector);
const state = { key: sessionStorage.getItem(KEY_ITEM), jobs: new Map(), streams: new Map(),
                descriptions: {}, map: null, mapReady: null, selected: null, popup: null };
window.geojobsConsole = state; // for the browser test and for curious users

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children) node.append(child);
  return node;
}

// -- HTTP -----------------------------------------------------------------------------------

async function api(path, { json, headers, ...options } = {}) {
  const h = new Headers(headers || {});
  h.set('Authorization', `Bearer ${state.key}`);
  if (json !== undefined) {
    h.set('Content-Type', 'application/json');
    options.body = JSON.stringify(json);
  }
  return fetch(API + path, { ...options, headers: h });
}

async function problem(response) {
  try {
    return await response.json();
  } catch {
    return { status: response.status, detail: `${response.status} ${response.statusText}` };
  }
}

// -- login ----------------------------------------------------------------------------------

async function login(candidate) {
  state.key = candidate;
  const response = await api('/jobs?limit=1');
  if (!response.ok) {
    state.key = null;
    return (await problem(response)).detail || 'the key was refused';
  }
  sessionStorage.setItem(KEY_ITEM, candidate);
  return null;
}

function askForKey() {
  const dialog = $('#login');
  $('#login-form').onsubmit = async (event) => {
    event.preventDefault();
    const error = await login($('#key').value.trim());
    $('#login-error').textContent = error || '';
    if (!error) {
      dialog.close();
      start();
    }
  };
  dialog.showModal();
}

function logout() {
  sessionStorage.removeItem(KEY_ITEM);
  for (const controller of state.streams.values()) controller.abort();
  location.reload();
}

// -- processes and the generated form -------------------------------------------------------

async function loadProcesses() {
  const response = await api('/processes');
  const { processes } = await response.json();
  const select = $('#process');
  select.replaceChildren(...processes.map((p) => el('option', { value: p.id, text: p.id })));
  select.onchange = () => showForm(select.value);
  const first = processes.find((p) => p.id === 'dissolve') || processes[0];
  if (first) {
    select.value = first.id;
    await showForm(first.id);
  }
}

function kindOf(schema) {
  if (schema.enum) return 'enum';
  if (schema.anyOf) return schema.anyOf.some((s) => s.type === 'string') ? 'string' : 'json';
  if (schema.type === 'array') {
    const items = schema.items || {};
    return ['string', 'integer', 'number'].includes(items.type) && !items.enum ? 'list' : 'json';
  }
  if (['string', 'integer', 'number', 'boolean'].includes(schema.type)) return schema.type;
  return 'json';
}

function field(name, input, example) {
  const schema = input.schema || {};
  const kind = kindOf(schema);
  const required = input.minOccurs > 0;
  const id = `in-${name}`;
  let value = example !== undefined ? example : schema.default;
  let control;
  if (kind === 'boolean') {
    control = el('input', { id, type: 'checkbox', checked: value === true });
  } else if (kind === 'enum') {
    const options = (required ? [] : [el('option', { value: '', text: '' })])
      .concat(schema.enum.map((v) => el('option', { value: String(v), text: String(v) })));
    control = el('select', { id }, ...options);
    control.value = value === undefined || value === null ? '' : String(value);
  } else if (kind === 'json') {
    control = el('textarea', { id, rows: 2, placeholder: 'JSON' });
    control.value = value === undefined || value === null ? '' : JSON.stringify(value);
  } else {
    const text = value === undefined || value === null ? ''
      : Array.isArray(value) ? value.join(', ')
        : typeof value === 'object' ? JSON.stringify(value) : String(value);
    control = el('input', { id, type: 'text', value: text,
                            placeholder: kind === 'list' ? 'comma-separated' : kind });
  }
  control.name = name;
  control.dataset.kind = kind;
  const label = el('label', { for: id }, input.title || name, required ? el('span', { class: 'req', text: ' *' }) : '');
  return el('div', { class: 'field', 'data-field': name }, label, control,
            el('small', { class: 'hint', text: input.description || '' }),
            el('span', { class: 'field-error', role: 'alert' }));
}

async function showForm(processId) {
  if (!state.descriptions[processId]) {
    const response = await api(`/processes/${encodeURIComponent(processId)}`);
    state.descriptions[processId] = await response.json();
  }
  const description = state.descriptions[processId];
  $('#process-description').textContent = description.description || '';
  const example = (description.example && description.example.inputs) || {};
  const names = Object.keys(description.inputs);
  // required inputs first, then the example's, then the rest, in the schema's order
  const rank = (n) => (description.inputs[n].minOccurs > 0 ? 0 : n in example ? 1 : 2);
  names.sort((a, b) => rank(a) - rank(b));
  $('#fields').replaceChildren(...names.map((n) => field(n, description.inputs[n], example[n])));
  clearErrors();
}

function readValue(control) {
  const kind = control.dataset.kind;
  if (kind === 'boolean') return control.checked;
  const text = control.value.trim();
  if (text === '') return undefined;
  switch (kind) {
    case 'integer':
    case 'number': {
      const number = Number(text);
      return Number.isFinite(number) ? number : text; // the API names the field if it is wrong
    }
    case 'list': return text.split(',').map((s) => s.trim()).filter((s) => s !== '');
    case 'string':
      if (text.startsWith('{')) {
        try { return JSON.parse(text); } catch { return text; }
      }
      return text;
    default:
      try { return JSON.parse(text); } catch { return text; }
  }
}

function collectInputs(processId) {
  const description = state.descriptions[processId];
  const inputs = {};
  for (const control of $('#fields').querySelectorAll('[name]')) {
    const value = readValue(control);
    const input = description.inputs[control.name];
    if (value === undefined) continue;
    if (control.dataset.kind === 'boolean' && value === false && input.minOccurs === 0
        && (input.schema || {}).default !== true) continue;
    inputs[control.name] = value;
  }
  return inputs;
}

function clearErrors() {
  $('#form-error').textContent = '';
  for (const node of document.querySelectorAll('.field')) {
    node.classList.remove('invalid');
    node.querySelector('.field-error').textContent = '';
  }
}

function showProblem(body) {
  // "inputs.by.0" -> the field "by"; anything else shows above the button
  const parts = String(body.field || '').split('.');
  const name = parts[0] === 'inputs' ? parts[1] : null;
  const node = name && document.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  if (node) {
    node.classList.add('invalid');
    node.querySelector('.field-error').textContent = body.detail;
    node.querySelector('[name]').focus();
  }
  $('#form-error').textContent = `${body.title || 'Error'}: ${body.detail}`;
}

async function submitJob(event) {
  event.preventDefault();
  clearErrors();
  const processId = $('#process').value;
  const inputs = collectInputs(processId);
  await execute(processId, inputs);
}

async function execute(processId, inputs) {
  const response = await api(`/processes/${encodeURIComponent(processId)}/execution`,
                             { method: 'POST', json: { inputs } });
  if (!response.ok) {
    showProblem(await problem(response));
    return null;
  }
  const info = await response.json();
  upsertJob(info);
  follow(info.jobID);
  return info;
}

// -- jobs: list, live status, retry, dismiss ------------------------------------------------

async function loadJobs() {
  const response = await api('/jobs?limit=50');
  if (!response.ok) return;
  const { jobs } = await response.json();
  const seen = new Set(jobs.map((j) => j.jobID));
  for (const id of [...state.jobs.keys()]) if (!seen.has(id)) removeJob(id);
  for (const info of jobs.slice().reverse()) {
    upsertJob(info);
    if (!FINAL.has(info.status)) follow(info.jobID);
  }
}

function jobRow(info) {
  const row = el('tr', { 'data-job-id': info.jobID });
  row.append(
    el('td', { text: info.jobID }),
    el('td', { text: info.processID }),
    el('td', { class: 'status' }),
    el('td', {}, el('progress', { max: 100, value: 0 }), el('span', { class: 'pct' })),
    el('td', { class: 'actions' }),
  );
  return row;
}

function upsertJob(info) {
  const tbody = $('#jobs tbody');
  let row = tbody.querySelector(`tr[data-job-id="${CSS.escape(info.jobID)}"]`);
  if (!row) {
    row = jobRow(info);
    tbody.prepend(row);
  }
  const previous = state.jobs.get(info.jobID) || {};
  info = { ...previous, ...info };
  state.jobs.set(info.jobID, info);
  row.dataset.status = info.status;
  const status = row.querySelector('.status');
  status.textContent = info.status;
  status.title = info.message || '';
  status.className = `status ${info.status}`;
  row.querySelector('progress').value = info.progress || 0;
  row.querySelector('.pct').textContent = ` ${info.progress || 0} %`;
  const actions = row.querySelector('.actions');
  const buttons = [];
  if (info.status === 'successful') {
    buttons.push(el('button', { type: 'button', class: 'show', text: 'Map',
                                onclick: () => selectJob(info.jobID) }));
  }
  if (info.status === 'failed' || info.status === 'dismissed') {
    buttons.push(el('button', { type: 'button', class: 'retry', text: 'Retry',
                                onclick: () => retryJob(info.jobID) }));
  }
  buttons.push(el('button', { type: 'button', class: 'dismiss',
                              text: FINAL.has(info.status) ? 'Dismiss' : 'Cancel',
                              onclick: () => dismissJob(info.jobID) }));
  actions.replaceChildren(...buttons);
}

function removeJob(id) {
  state.jobs.delete(id);
  const controller = state.streams.get(id);
  if (controller) controller.abort();
  const row = $('#jobs tbody').querySelector(`tr[data-job-id="${CSS.escape(id)}"]`);
  if (row) row.remove();
  if (state.selected === id) clearResult();
}

// EventSource cannot send an Authorization header: read the SSE response with fetch().
async function follow(id) {
  if (state.streams.has(id)) return;
  const controller = new AbortController();
  state.streams.set(id, controller);
  let final = false;
  try {
    const response = await api(`/jobs/${encodeURIComponent(id)}/events`,
                               { signal: controller.signal, headers: { Accept: 'text/event-stream' } });
    if (!response.ok) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (!data) continue; // a keep-alive comment
        const info = JSON.parse(data);
        if (info.status === 'dismissed' && !info.processID) {
          removeJob(id);
          final = true;
          continue;
        }
        upsertJob(info);
        final = FINAL.has(info.status);
      }
    }
  } catch (error) {
    if (error.name === 'AbortError') return;
    console.warn('status stream of job', id, error);
  } finally {
    state.streams.delete(id);
  }
  if (!final && state.jobs.has(id)) setTimeout(() => follow(id), 2000); // the stream broke
}

async function retryJob(id) {
  // A retry queues a new job of the same process with the same inputs.
  const response = await api(`/jobs/${encodeURIComponent(id)}/inputs`);
  if (!response.ok) {
    $('#form-error').textContent = (await problem(response)).detail;
    return;
  }
  const { processID, inputs } = await response.json();
  await execute(processID, inputs);
}

async function dismissJob(id) {
  const response = await api(`/jobs/${encodeURIComponent(id)}`, { method: 'DELETE' });
  if (!response.ok) {
    $('#form-error').textContent = (await problem(response)).detail;
    return;
  }
  const info = await response.json();
  const before = state.jobs.get(id) || {};
  if (FINAL.has(before.status)) removeJob(id); // a finished job's row and result are deleted
  else upsertJob(info);
}

// -- the map --------------------------------------------------------------------------------

function baseStyle() {
  // No basemap unless the server names one (GEOJOBS_CONSOLE_BASEMAP): nothing leaves the API.
  const style = { version: 8, sources: {},
                  layers: [{ id: 'background', type: 'background', paint: { 'background-color': BACKGROUND } }] };
  const tiles = document.body.dataset.basemap;
  if (tiles) {
    style.sources.basemap = { type: 'raster', tiles: [tiles], tileSize: 256,
                              attribution: document.body.dataset.basemapAttribution || '' };
    style.layers.push({ id: 'basemap', type: 'raster', source: 'basemap' });
  }
  return style;
}

function createMap() {
  const map = new maplibregl.Map({
    container: 'map',
    style: baseStyle(),
    center: [0, 20], zoom: 1, attributionControl: document.body.dataset.basemap ? {} : false,
    transformRequest: (url) => (url.startsWith(location.origin)
      ? { url, headers: { Authorization: `Bearer ${state.key}` } } : { url }),
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  state.map = map;
  state.mapReady = new Promise((resolve) => map.on('load', resolve));
  for (const layer of ['result-fill', 'result-line', 'result-circle']) {
    map.on('click', layer, (event) => showPopup(event));
    map.on('mouseenter', layer, () => { map.getCanvas().style.cursor = 'pointer'; });
    map.on('mouseleave', layer, () => { map.getCanvas().style.cursor = ''; });
  }
}

function showPopup(event) {
  const feature = event.features && event.features[0];
  if (!feature) return;
  const rows = Object.entries(feature.properties).map(([k, v]) => el('tr', {},
    el('th', { text: k }), el('td', { text: v === null ? '' : String(v) })));
  if (state.popup) state.popup.remove();
  state.popup = new maplibregl.Popup({ maxWidth: '360px' }).setLngLat(event.lngLat)
    .setDOMContent(el('table', { class: 'attributes' }, ...rows)).addTo(state.map);
}

function paintColor(renderer) {
  if (!renderer.field) return renderer.classes[0][1];
  const fallback = (renderer.classes.find(([v]) => v === null || v === 0) || [null, '#cccccc'])[1];
  const expression = ['match', ['get', renderer.field]];
  for (const [value, color] of renderer.classes) if (value !== null) expression.push(value, color);
  expression.push(fallback);
  return expression;
}

function showLegend(renderer) {
  const legend = $('#legend');
  const items = renderer.classes.map(([, color, label]) => el('li', {},
    el('span', { class: 'swatch', style: `background:${color}` }), label));
  legend.replaceChildren(...(renderer.title ? [el('strong', { text: renderer.title })] : []),
                         el('ul', {}, ...items));
  legend.hidden = false;
}

function clearResult() {
  const map = state.map;
  for (const layer of ['result-fill', 'result-line', 'result-circle']) {
    if (map.getLayer(layer)) map.removeLayer(layer);
  }
  if (map.getSource('result')) map.removeSource('result');
  if (state.popup) state.popup.remove();
  state.selected = null;
  $('#legend').hidden = true;
  $('#downloads').replaceChildren();
  $('#result-title').textContent = 'Select a successful job to map its result.';
  delete $('#map').dataset.loaded;
  for (const row of document.querySelectorAll('#jobs tr.selected')) row.classList.remove('selected');
}

async function selectJob(id) {
  await state.mapReady;
  clearResult();
  state.selected = id;
  const info = state.jobs.get(id);
  const row = $('#jobs tbody').querySelector(`tr[data-job-id="${CSS.escape(id)}"]`);
  if (row) row.classList.add('selected');
  const response = await api(`/jobs/${encodeURIComponent(id)}/results`);
  if (!response.ok) {
    $('#result-title').textContent = (await problem(response)).detail;
    return;
  }
  const document_ = await response.json();
  showDownloads(id, document_);
  if (!document_.layer) {
    $('#result-title').textContent = `Job ${id}: no layer to map`;
    return;
  }
  const collection = decodeURIComponent(document_.layer.href.split('/collections/')[1]);
  $('#result-title').textContent = `Job ${id} (${info.processID}): ${collection}`;
  const tilejson = await api(`/collections/${encodeURIComponent(collection)}/tiles/WebMercatorQuad/tilejson.json`);
  if (!tilejson.ok) {
    $('#result-title').textContent = (await problem(tilejson)).detail;
    return;
  }
  const tiles = await tilejson.json();
  const sourceLayer = tiles.vector_layers && tiles.vector_layers[0] ? tiles.vector_layers[0].id : 'default';
  const fields = tiles.vector_layers && tiles.vector_layers[0] ? tiles.vector_layers[0].fields || {} : {};
  const rendererName = RENDERER_OF_PROCESS[info.processID] || Object.keys(RENDERERS).find((f) => f in fields);
  const renderer = rendererName && fields[RENDERERS[rendererName].field] !== undefined
    ? RENDERERS[rendererName] : SINGLE;
  const map = state.map;
  map.addSource('result', { type: 'vector', tiles: tiles.tiles, minzoom: tiles.minzoom || 0,
                            maxzoom: Math.min(tiles.maxzoom || 22, 22), bounds: tiles.bounds });
  const color = paintColor(renderer);
  const common = { source: 'result', 'source-layer': sourceLayer };
  map.addLayer({ id: 'result-fill', type: 'fill', ...common, filter: ['==', ['geometry-type'], 'Polygon'],
                 paint: { 'fill-color': color, 'fill-opacity': 0.85 } });
  map.addLayer({ id: 'result-line', type: 'line', ...common,
                 filter: ['in', ['geometry-type'], ['literal', ['Polygon', 'LineString']]],
                 paint: { 'line-color': ['case', ['==', ['geometry-type'], 'Polygon'], '#6e6e6e', color],
                          'line-width': ['case', ['==', ['geometry-type'], 'Polygon'], 0.5, 2] } });
  map.addLayer({ id: 'result-circle', type: 'circle', ...common, filter: ['==', ['geometry-type'], 'Point'],
                 paint: { 'circle-color': color, 'circle-radius': 4, 'circle-stroke-color': '#6e6e6e',
                          'circle-stroke-width': 0.5 } });
  showLegend(renderer);
  if (tiles.bounds) map.fitBounds(tiles.bounds, { padding: 24, animate: false, maxZoom: 16 });
  map.once('idle', () => {
    if (state.selected !== id) return;
    const drawn = map.queryRenderedFeatures({ layers: ['result-fill', 'result-line', 'result-circle'] });
    const container = $('#map');
    container.dataset.features = String(drawn.length);
    container.dataset.loaded = collection;
  });
}

function filename(response, fallback) {
  const header = response.headers.get('Content-Disposition') || '';
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(header);
  return match ? decodeURIComponent(match[1]) : fallback;
}

async function download(id, path, fallback, button) {
  button.disabled = true;
  try {
    const response = await api(path);
    if (!response.ok) {
      $('#result-title').textContent = (await problem(response)).detail;
      return;
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: filename(response, fallback) });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } finally {
    button.disabled = false;
  }
}

function showDownloads(id, document_) {
  const buttons = [];
  if (document_.layer) {
    for (const [f, label] of FORMATS) {
      const button = el('button', { type: 'button', class: 'download', 'data-format': f, text: label });
      button.onclick = () => download(id, `/jobs/${encodeURIComponent(id)}/results?f=${f}`, `job-${id}.${f}`, button);
      buttons.push(button);
    }
  }
  if (document_.cog) {
    const button = el('button', { type: 'button', class: 'download', 'data-format': 'cog', text: 'COG' });
    button.onclick = () => download(id, `/jobs/${encodeURIComponent(id)}/results/cog`, `job-${id}.tif`, button);
    buttons.push(button);
  }
  $('#downloads').replaceChildren(...buttons);
}

// -- start ----------------------------------------------------------------------------------

async function start() {
  $('#who').textContent = 'key set for this tab';
  $('#logout').hidden = false;
  $('#logout').onclick = logout;
  $('#refresh').onclick = loadJobs;
  $('#job-form').onsubmit = submitJob;
  if (!state.map) createMap();
  await Promise.all([loadProcesses(), loadJobs()]);
  document.body.dataset.ready = 'true';
}

if (state.key) {
  login(state.key).then((error) => (error ? askForKey() : start()));
} else {
  askForKey();
}
