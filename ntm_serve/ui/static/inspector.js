// The NTM inspector page: lists models and sessions, watches one session (server-sent events from
// /api/sessions/{id}/watch) and draws it on canvases as in Graves et al.'s figures: inputs, outputs and targets,
// then the write and read weightings over time (time on x, memory rows on y), then the memory now.
// No libraries, no build step. What is drawn is also kept in `window.inspector` (the browser tests read it).
"use strict";

const MAX_STEPS_SHOWN = 160; // time steps drawn at most (the newest)
const USED = 0.01; // a row is in use once a head weighted it above this
const MARGIN = 2; // rows shown either side of the rows in use

const state = {
  token: sessionStorage.getItem("ntm-token") || "",
  models: [],
  selected: null,
  watch: null, // AbortController of the open watch
  frames: new Map(), // step -> {inputs, outputs, read_weights, write_weights}
  first: null, // the step of the watch's snapshot
  latest: null, // the newest frame holding the memory
  hits: null, // per memory row: ever weighted above USED
  tries: {}, // session id -> the try-it run's example {inputs, targets, first, kind, total}
  drawPending: false,
};

const inspector = {
  session: null, frames: 0, steps: null, dropped: 0, rows: null, memory: null, ended: null, drawn: 0,
};
window.inspector = inspector;

const $ = (id) => document.getElementById(id);

// --- the API ---------------------------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h.Authorization = "Bearer " + state.token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.body ? { "Content-Type": "application/json" } : {});
  const response = await fetch(path, opts);
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const err = new Error((data && data.error) || response.statusText);
    err.status = response.status;
    err.code = data && data.code;
    if (response.status === 401) refused(err.message);
    throw err;
  }
  return data;
}

function refused(message) {
  document.body.dataset.auth = "refused";
  const who = $("whoami");
  who.textContent = "token refused: " + message;
  who.className = "bad";
}

// --- colours ---------------------------------------------------------------------------------------------

const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}

function diverging(t) { // t in [-1, 1]: blue, white, red
  const x = Math.min(1, Math.max(-1, t));
  const white = [247, 247, 247];
  const end = x < 0 ? [33, 102, 172] : [178, 24, 43];
  const f = Math.abs(x);
  return [white[0] + f * (end[0] - white[0]), white[1] + f * (end[1] - white[1]), white[2] + f * (end[2] - white[2])];
}

// --- drawing ---------------------------------------------------------------------------------------------

// A rows × cols grid of cells; colour(r, c) is [r, g, b] or null (no data: light grey). Returns the canvas.
function drawGrid(canvas, rows, cols, colour, opts) {
  const o = Object.assign({ maxCell: 14, maxHeight: 260 }, opts || {});
  const width = Math.max(120, canvas.parentElement.clientWidth - 4);
  const cw = Math.max(1, Math.min(o.maxCell, Math.floor(width / Math.max(cols, 1))));
  const ch = Math.max(1, Math.min(o.maxCell, Math.floor(o.maxHeight / Math.max(rows, 1))));
  canvas.width = Math.max(1, cols * cw);
  canvas.height = Math.max(1, rows * ch);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  const px = image.data;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const rgb = colour(r, c) || [236, 238, 242];
      for (let y = r * ch; y < (r + 1) * ch; y++) {
        let at = (y * canvas.width + c * cw) * 4;
        for (let x = 0; x < cw; x++, at += 4) {
          px[at] = rgb[0]; px[at + 1] = rgb[1]; px[at + 2] = rgb[2]; px[at + 3] = 255;
        }
      }
    }
  }
  ctx.putImageData(image, 0, 0);
  return { ctx, cw, ch };
}

// The rows the heads visited, as the shortest window around the ring holding them all, MARGIN rows either side
// (as ntm_serve/plots.py's used_rows): shifts wrap, so a path over rows N-1, 0, 1 stays in one piece.
function usedRows(hits) {
  const n = hits.length;
  const hit = [];
  hits.forEach((h, i) => { if (h) hit.push(i); });
  if (!hit.length) return Array.from({ length: n }, (_, i) => i);
  let largest = 0, widest = -1;
  hit.forEach((row, k) => {
    const gap = (k + 1 < hit.length ? hit[k + 1] : hit[0] + n) - row;
    if (gap > widest) { widest = gap; largest = k; }
  });
  const start = hit[(largest + 1) % hit.length], end = hit[largest];
  const length = Math.min(n, (((end - start) % n) + n) % n + 1 + 2 * MARGIN);
  return Array.from({ length }, (_, i) => (((start - MARGIN + i) % n) + n) % n);
}

function maxAbs(rows) {
  let m = 0;
  for (const row of rows) for (const v of row) m = Math.max(m, Math.abs(v));
  return m || 1;
}

function scheduleDraw() {
  if (state.drawPending) return;
  state.drawPending = true;
  setTimeout(() => { state.drawPending = false; draw(); }, 30);
}

function timeWindow() {
  const steps = [...state.frames.keys()];
  const newest = steps.length ? Math.max(...steps) : (state.first || 0);
  const run = state.tries[state.selected];
  const end = run ? Math.max(newest, run.total) : newest;
  const start = Math.max((state.first || 0) + 1, end - MAX_STEPS_SHOWN + 1);
  return { start, count: Math.max(0, end - start + 1) };
}

function draw() {
  const win = timeWindow();
  const at = (c) => state.frames.get(win.start + c);
  const sample = [...state.frames.values()].find((f) => f.inputs) || null;
  const run = state.tries[state.selected];
  // Inputs, outputs, targets: channels × time.
  const inWidth = sample ? sample.inputs.length : (run ? run.inputs[0].length : 0);
  const outWidth = sample ? sample.outputs.length : (run ? run.targets[0].length : 0);
  drawGrid($("c-inputs"), inWidth, win.count, (r, c) => {
    const f = at(c);
    if (f && f.inputs) return viridis(f.inputs[r]);
    const k = win.start + c - 1; // a try-it run knows its inputs before they are stepped: drawn faintly
    if (run && k < run.inputs.length) { const v = viridis(run.inputs[k][r]); return v.map((x) => 236 + (x - 236) * 0.25); }
    return null;
  }, { maxHeight: 120 });
  const out = drawGrid($("c-outputs"), outWidth, win.count, (r, c) => {
    const f = at(c);
    return f && f.outputs ? viridis(f.outputs[r]) : null;
  }, { maxHeight: 120 });
  $("c-targets").hidden = !run;
  $("targets-caption").textContent = run ? "Targets (compared with the outputs of the last " + run.targets.length +
    " steps; red: wrong)" : "Targets: known for try-it runs only";
  if (run) {
    drawGrid($("c-targets"), outWidth, win.count, (r, c) => {
      const j = win.start + c - 1 - run.first;
      return j >= 0 && j < run.targets.length ? viridis(run.targets[j][r]) : null;
    }, { maxHeight: 120 });
    markErrors(out, run, win);
  }
  // Weightings over time: memory rows in use × time, every head stacked.
  const rows = state.hits ? usedRows(state.hits) : [];
  inspector.rows = rows;
  for (const [canvas, name] of [["c-write", "write_weights"], ["c-read", "read_weights"]]) {
    const heads = sample && sample[name] ? sample[name].length : (state.latest ? state.latest[name].length : 1);
    const per = rows.length + 1; // a blank row between heads
    drawGrid($(canvas), heads * per - 1, win.count, (r, c) => {
      const head = Math.floor(r / per), k = r % per;
      if (k === rows.length) return [255, 255, 255];
      const f = at(c);
      return f && f[name] ? viridis(f[name][head][rows[k]]) : null;
    });
  }
  // The memory now, cropped to the rows in use; the read vectors now.
  const latest = state.latest;
  const memCanvas = $("c-memory");
  if (latest && latest.memory) {
    const memory = rows.map((r) => latest.memory[r]);
    const scale = maxAbs(memory);
    drawGrid(memCanvas, memory.length, memory[0].length, (r, c) => diverging(memory[r][c] / scale),
      { maxCell: 14, maxHeight: 320 });
    inspector.memory = memory;
    memCanvas.dataset.steps = String(latest.steps);
    const vectors = latest.read_vectors;
    if (vectors) {
      const vs = maxAbs(vectors);
      drawGrid($("c-readvec"), vectors.length, vectors[0].length, (r, c) => diverging(vectors[r][c] / vs), { maxCell: 10 });
    }
  }
  drawDigit();
  $("watch").dataset.steps = inspector.steps === null ? "" : String(inspector.steps);
  inspector.drawn += 1;
}

// Red boxes on the outputs that are wrong: bits on the wrong side of 0.5, or a label that is not the target's.
function markErrors(out, run, win) {
  out.ctx.strokeStyle = "#e0102f";
  out.ctx.lineWidth = Math.max(1, Math.floor(out.cw / 4));
  const box = (c, r) => out.ctx.strokeRect(c * out.cw + 0.5, r * out.ch + 0.5, out.cw - 1, out.ch - 1);
  const argmax = (v) => v.indexOf(Math.max(...v));
  for (let c = 0; c < win.count; c++) {
    const f = state.frames.get(win.start + c);
    const j = win.start + c - 1 - run.first;
    if (!f || !f.outputs || j < 0 || j >= run.targets.length) continue;
    if (run.kind === "bits") {
      f.outputs.forEach((v, r) => { if ((v > 0.5) !== (run.targets[j][r] > 0.5)) box(c, r); });
    } else if (argmax(f.outputs) !== argmax(run.targets[j])) {
      box(c, argmax(f.outputs));
    }
  }
}

// One-shot episodes: the current sample's 64 features as the 8 × 8 digit it is.
function drawDigit() {
  const steps = [...state.frames.keys()];
  const f = steps.length ? state.frames.get(Math.max(...steps)) : null;
  const show = !!(f && f.inputs && f.inputs.length === 69);
  $("c-digit").hidden = !show;
  $("digit-caption").hidden = !show;
  if (!show) return;
  drawGrid($("c-digit"), 8, 8, (r, c) => { const v = 255 - 255 * f.inputs[r * 8 + c]; return [v, v, v]; }, { maxCell: 12 });
}

// --- watching --------------------------------------------------------------------------------------------

function resetPicture(sessionId) {
  state.frames = new Map();
  state.first = null;
  state.latest = null;
  state.hits = null;
  Object.assign(inspector, { session: sessionId, frames: 0, steps: null, dropped: 0, rows: null, memory: null,
    ended: null });
  $("watch-end").textContent = "";
  $("watch-end").className = "status";
}

function onFrame(frame) {
  if (frame.snapshot) state.first = frame.steps;
  if (state.first === null) state.first = frame.steps - 1;
  const weights = frame.read_weights || frame.write_weights;
  if (weights && !state.hits) state.hits = new Array(weights[0].length).fill(false);
  for (const name of ["read_weights", "write_weights"]) {
    if (!frame[name] || frame.snapshot) continue;
    for (const head of frame[name]) head.forEach((w, i) => { if (w > USED) state.hits[i] = true; });
  }
  if (!frame.snapshot) {
    state.frames.set(frame.steps, { inputs: frame.inputs, outputs: frame.outputs, read_weights: frame.read_weights,
      write_weights: frame.write_weights });
    const old = frame.steps - 4 * MAX_STEPS_SHOWN;
    for (const step of state.frames.keys()) if (step < old) state.frames.delete(step);
  }
  if (frame.memory) state.latest = frame;
  inspector.frames += 1;
  inspector.steps = frame.steps;
  inspector.dropped += frame.dropped;
  $("watch-info").textContent = "step " + frame.steps + " · " + inspector.frames + " frames · " +
    inspector.dropped + " dropped";
  scheduleDraw();
}

function onEnd(end) {
  inspector.ended = end;
  const box = $("watch-end");
  box.textContent = "watch ended: " + end.code + ": " + end.message;
  box.className = "status " + (end.code === "NOT_FOUND" ? "muted" : "bad");
}

async function watch(sessionId) {
  if (state.watch) state.watch.abort();
  const controller = new AbortController();
  state.watch = controller;
  state.selected = sessionId;
  resetPicture(sessionId);
  $("watch").dataset.sessionId = sessionId;
  $("watch-title").textContent = sessionId;
  highlight();
  const every = Math.max(1, parseInt($("watch-every").value, 10) || 1);
  let response;
  try {
    response = await fetch("/api/sessions/" + encodeURIComponent(sessionId) + "/watch?every=" + every,
      { headers: headers(), signal: controller.signal });
  } catch (err) {
    if (err.name !== "AbortError") onEnd({ code: "UNAVAILABLE", message: String(err) });
    return;
  }
  if (!response.ok) {
    let data = {};
    try { data = await response.json(); } catch (_) { data = {}; }
    if (response.status === 401) refused(data.error || "");
    onEnd({ code: data.code || String(response.status), message: data.error || response.statusText });
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let kind = "message", data = "";
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (state.watch !== controller) return;
        if (kind === "frame") onFrame(JSON.parse(data));
        else if (kind === "end") onEnd(JSON.parse(data));
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") onEnd({ code: "UNAVAILABLE", message: "the stream broke: " + err });
  }
}

// --- lists -----------------------------------------------------------------------------------------------

function highlight() {
  for (const li of $("sessions").children) li.classList.toggle("selected", li.dataset.sessionId === state.selected);
  const model = state.models.find((m) => m.name === (state.sessionModels || {})[state.selected]);
  $("encoding").textContent = model ? model.name + " v" + model.version + " (" + model.task + "): " + model.encoding : "";
}

async function refreshSessions() {
  let sessions;
  try { sessions = await api("/api/sessions"); } catch (_) { return; }
  const list = $("sessions");
  list.replaceChildren();
  state.sessionModels = {};
  for (const s of sessions) {
    state.sessionModels[s.session_id] = s.model;
    const li = document.createElement("li");
    li.dataset.sessionId = s.session_id;
    li.title = s.session_id + (s.owner ? " (owner " + s.owner + ")" : "");
    const id = document.createElement("span");
    id.textContent = s.session_id.slice(0, 10) + "…";
    const model = document.createElement("span");
    model.className = "model";
    model.textContent = s.model + " v" + s.version;
    const steps = document.createElement("span");
    steps.className = "steps";
    steps.textContent = s.steps + " steps" + (s.memory_rows ? " · N=" + s.memory_rows : "") + (s.yours ? "" : " · other");
    li.append(id, model, steps);
    li.addEventListener("click", () => watch(s.session_id));
    list.append(li);
  }
  $("sessions-count").textContent = "(" + sessions.length + ")";
  highlight();
}

async function loadModels() {
  state.models = await api("/api/models");
  const body = $("models").querySelector("tbody");
  body.replaceChildren();
  const select = $("try-model");
  const chosen = select.value;
  select.replaceChildren();
  const tryable = ["copy", "repeat_copy", "associative_recall", "priority_sort", "one_shot", "one_shot_synthetic"];
  for (const m of state.models) {
    const tr = document.createElement("tr");
    tr.title = m.encoding + "\nprovider " + m.provider + ", controller " + m.controller;
    for (const text of [m.name + (m.unloading ? " (unloading)" : ""), m.task, m.version,
      m.memory_rows + "×" + m.memory_width, m.read_heads + "R " + m.write_heads + "W"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
    if (tryable.includes(m.task) && !select.querySelector("option[value='" + m.name + "']")) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.name + " (" + m.task + ")";
      select.append(option);
    }
  }
  if (chosen) select.value = chosen;
}

// --- try it ----------------------------------------------------------------------------------------------

function describe(report) {
  const r = report.result || {};
  if (r.bit_errors !== undefined) return r.bit_errors + " bit errors of " + r.bits;
  if (r.correct !== undefined) {
    return r.correct + " of " + r.total + " labels right; " + r.correct_after_first + " of " + r.after_first +
      " after a class's first sample";
  }
  return "";
}

async function runTry() {
  const status = $("try-status");
  const button = $("try-run");
  button.disabled = true;
  status.className = "status";
  status.dataset.status = "starting";
  status.textContent = "creating a session…";
  let run;
  try {
    run = await api("/api/try", { method: "POST", body: JSON.stringify({
      model: $("try-model").value, seed: parseInt($("try-seed").value, 10) || 0,
      delay_ms: parseInt($("try-delay").value, 10) || 0 }) });
  } catch (err) {
    status.dataset.status = "failed";
    status.className = "status bad";
    status.textContent = "refused: " + err.message;
    button.disabled = false;
    return;
  }
  state.tries[run.session_id] = { inputs: run.inputs, targets: run.targets, first: run.first, kind: run.kind,
    total: run.total };
  $("try-seed").value = (parseInt($("try-seed").value, 10) || 0) + 1; // the next run: a new example
  watch(run.session_id);
  refreshSessions();
  for (;;) {
    let report;
    try { report = await api("/api/try/" + encodeURIComponent(run.session_id)); } catch (err) {
      status.dataset.status = "failed";
      status.className = "status bad";
      status.textContent = err.message;
      break;
    }
    status.dataset.status = report.status;
    if (report.status === "done") {
      const r = report.result;
      status.dataset.bitErrors = r.bit_errors !== undefined ? String(r.bit_errors) : "";
      status.dataset.correct = r.correct !== undefined ? String(r.correct) : "";
      status.className = "status " + ((r.bit_errors === 0 || (r.total && r.correct_after_first >= 0.8 * r.after_first))
        ? "good" : "bad");
      status.textContent = report.model + ": " + describe(report);
      break;
    }
    if (report.status === "failed") {
      status.className = "status bad";
      status.textContent = "failed: " + report.error;
      break;
    }
    status.textContent = report.model + ": step " + report.steps + " of " + report.total + "…";
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  button.disabled = false;
}

// --- start -----------------------------------------------------------------------------------------------

async function start() {
  document.body.dataset.auth = "";
  const who = $("whoami");
  try {
    const me = await api("/api/whoami");
    document.body.dataset.auth = "ok";
    who.className = "muted";
    who.textContent = me.admin ? "admin: every session" : "you: " + me.owner;
    if (me.try_it) {
      $("try-run").disabled = true;
      $("try-status").textContent = "try-it is off: " + me.try_it;
    }
    await loadModels();
    await refreshSessions();
  } catch (err) {
    if (err.status !== 401) { who.className = "bad"; who.textContent = String(err.message); }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = state.token;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("ntm-token", state.token);
    start();
  });
  $("try-run").addEventListener("click", runTry);
  $("watch-every").addEventListener("change", () => { if (state.selected) watch(state.selected); });
  window.addEventListener("resize", scheduleDraw);
  setInterval(() => { if (document.body.dataset.auth === "ok") refreshSessions(); }, 1500);
  start();
});
