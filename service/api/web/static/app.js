// The explorer page: a client of the public API only (/metadata, /attributes, /sample, /encode, /decode, /edit,
// /interpolate). No framework and no build step.
"use strict";

// The textbook widget's sliders; the rest of the bundle's attributes can be added from the picker.
const TEXTBOOK_ATTRIBUTES = ["Male", "Eyeglasses", "Young", "Smiling", "Blond_Hair", "Pale_Skin", "Mustache"];
const DEBOUNCE_MS = 40;
const JSON_HEADERS = { "Content-Type": "application/json", Accept: "application/json" };

const $ = (id) => document.getElementById(id);

const state = {
  attributes: new Map(), // name -> /attributes entry
  strengths: new Map(), // name -> slider value, for the sliders on the page
  base: null, // the latent the sliders move: {z, label, seed}
  current: null, // what is shown: {z, image}
  dirty: false, // the sliders changed since the last edit was sent
  inFlight: false, // an edit is on its way: at most one at a time, the latest state wins
  movedAt: null, // when the slider move the next edit answers was made (performance.now())
  timer: null,
  generation: 0, // numbers the face requests; only the latest one's answer is shown

};

// Slider move to new face on screen, in ms, for every edit the page showed (read by the browser tests).
window.facevae = { timings: [] };

// ---- talking to the API ----------------------------------------------------------------------------------------

class ApiError extends Error {}

function describeError(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((item) => item.msg || JSON.stringify(item)).join("; ");
  return `the service answered ${status}`;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(`The service did not answer (${error.message}). Is it still running?`);
  }
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      // not JSON (a proxy's error page, say): the status alone has to do
    }
    throw new ApiError(`${response.status}: ${describeError(response.status, body)}`);
  }
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

function postJson(path, body) {
  return apiJson(path, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(body) });
}

function postPhoto(path, file) {
  const form = new FormData();
  form.append("image", file);
  return apiJson(path, { method: "POST", body: form, headers: { Accept: "application/json" } });
}

// ---- what the user sees -----------------------------------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setBusy(busy) {
  document.body.dataset.state = busy ? "busy" : "idle";
}

// Runs an action started by the user, showing its error (if any) in words instead of failing silently.
async function guarded(action) {
  clearError();
  setBusy(true);
  try {
    await action();
  } catch (error) {
    showError(error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`);
    if (!(error instanceof ApiError)) console.warn(error);
  } finally {
    setBusy(state.inFlight);
  }
}

function dataUrl(answer) {
  return `data:${answer.media_type};base64,${answer.images[0]}`;
}

async function showFace(answer) {
  const image = $("face");
  const url = dataUrl(answer);
  image.src = url;
  await image.decode();
  state.current = { z: answer.z[0], image: url };
  $("latent-output").value = JSON.stringify(state.current.z);
  const download = $("download");
  download.href = url;
  download.removeAttribute("aria-disabled");
  download.download = state.base.seed === null ? "face.png" : `face-seed-${state.base.seed}.png`;
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

// ---- the base face: a random one, a photo's or a pasted latent ----------------------------------------------------

// The new base is kept only if its face can be drawn (the service checks its length and values).
async function setBase(z, label, seed = null) {
  const previous = state.base;
  state.base = { z, label, seed };
  try {
    await renderNow();
  } catch (error) {
    state.base = previous;
    throw error;
  }
  $("face-source").textContent = label;
}

async function loadSeed(seed) {
  $("seed").value = seed;
  const answer = await apiJson(`/sample?n=1&seed=${seed}`, { headers: { Accept: "application/json" } });
  await setBase(answer.z[0], `random face, seed ${answer.seed}`, answer.seed);
}

async function loadPhoto(file) {
  const answer = await postPhoto("/encode", file);
  await setBase(answer.code, `photo ${file.name}`);
}

function parseLatent(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ApiError(`That is not JSON: ${error.message}`);
  }
  if (value && !Array.isArray(value)) value = value.code || value.z_mean || value.z;
  if (Array.isArray(value) && Array.isArray(value[0])) value = value[0];
  if (!Array.isArray(value) || !value.every((x) => typeof x === "number")) {
    throw new ApiError("A latent is a JSON list of numbers, or an object with a code, z_mean or z list.");
  }
  return value;
}

async function loadLatent(text) {
  await setBase(parseLatent(text), "pasted latent");
}

// ---- sliders ------------------------------------------------------------------------------------------------------

function editedAttributes() {
  const attributes = {};
  for (const [name, value] of state.strengths) if (value !== 0) attributes[name] = value;
  return attributes;
}

// The face for the base latent and the sliders as they are now.
async function renderNow() {
  const generation = ++state.generation;
  const attributes = editedAttributes();
  const answer = Object.keys(attributes).length
    ? await postJson("/edit", { z: state.base.z, attributes })
    : await postJson("/decode", { z: [state.base.z] });
  if (generation === state.generation) await showFace(answer);
}

// A slider moved: send an edit after a short pause in the movement, never more than one at a time. Moves made
// while an edit is on its way are folded into the next one, so dragging never piles up requests.
function scheduleEdit() {
  state.dirty = true;
  state.movedAt = state.movedAt ?? performance.now();
  clearTimeout(state.timer);
  state.timer = setTimeout(pump, DEBOUNCE_MS);
}

async function pump() {
  if (state.inFlight || !state.dirty || !state.base) return;
  state.inFlight = true;
  state.dirty = false;
  const movedAt = state.movedAt;
  state.movedAt = null;
  await guarded(async () => {
    await renderNow();
    window.facevae.timings.push(performance.now() - movedAt);
  });
  state.inFlight = false;
  setBusy(false);
  if (state.dirty) pump();
}

function addSlider(name) {
  const info = state.attributes.get(name);
  if (!info || state.strengths.has(name)) return;
  state.strengths.set(name, 0);
  const id = `slider-${name}`;
  const row = document.createElement("div");
  row.className = "slider";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = name.replaceAll("_", " ");
  const slider = document.createElement("input");
  Object.assign(slider, { type: "range", id, min: info.strength_min, max: info.strength_max, step: 0.1, value: 0 });
  slider.dataset.attribute = name;
  const output = document.createElement("output");
  output.htmlFor = id;
  output.value = "0.0";
  slider.addEventListener("input", () => {
    state.strengths.set(name, Number(slider.value));
    output.value = Number(slider.value).toFixed(1);
    scheduleEdit();
  });
  row.append(label, slider, output);
  $("sliders").append(row);
  refreshPicker();
}

function refreshPicker() {
  const picker = $("attribute-picker");
  picker.replaceChildren();
  for (const name of state.attributes.keys()) {
    if (state.strengths.has(name)) continue;
    picker.append(new Option(name.replaceAll("_", " "), name));
  }
  picker.disabled = $("add-attribute").disabled = picker.options.length === 0;
}

function resetSliders() {
  for (const slider of document.querySelectorAll("#sliders input[type=range]")) {
    slider.value = 0;
    slider.nextElementSibling.value = "0.0";
    state.strengths.set(slider.dataset.attribute, 0);
  }
  scheduleEdit();
}

// ---- interpolation ------------------------------------------------------------------------------------------------

async function secondLatent() {
  const file = $("walk-photo").files[0];
  if (file) return (await postPhoto("/encode", file)).code;
  let seed = $("walk-seed").value;
  if (seed === "") $("walk-seed").value = seed = randomSeed();
  const answer = await apiJson(`/sample?n=1&seed=${seed}`, { headers: { Accept: "application/json" } });
  return answer.z[0];
}

async function interpolate() {
  if (!state.current) throw new ApiError("Choose a face first.");
  const end = await secondLatent();
  const query = new URLSearchParams({ steps: $("walk-steps").value, method: $("walk-method").value });
  const response = await api(`/interpolate?${query}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "image/png" },
    body: JSON.stringify({ start: state.current.z, end }),
  });
  const strip = $("strip");
  if (strip.src) URL.revokeObjectURL(strip.src);
  strip.src = URL.createObjectURL(await response.blob());
  await strip.decode();
  strip.hidden = false;
}

// ---- copying the latent -------------------------------------------------------------------------------------------

async function copyLatent() {
  const text = $("latent-output").value;
  if (!text) throw new ApiError("There is no latent to copy yet.");
  try {
    await navigator.clipboard.writeText(text);
  } catch (error) {
    // No clipboard API (plain http on another host): select the text so Ctrl+C copies it.
    $("latent-output").select();
    $("copy-status").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    return;
  }
  $("copy-status").textContent = "Copied.";
}

// ---- start --------------------------------------------------------------------------------------------------------

function on(id, event, action) {
  $(id).addEventListener(event, (e) => guarded(() => action(e)));
}

async function start() {
  const [metadata, list] = await Promise.all([apiJson("/metadata"), apiJson("/attributes")]);
  $("model-name").textContent = `model ${metadata.name}: ${metadata.image_size}×${metadata.image_size} faces, ${metadata.z_dim} latent dimensions`;
  for (const info of list.attributes) state.attributes.set(info.name, info);
  for (const name of TEXTBOOK_ATTRIBUTES) addSlider(name);
  refreshPicker();
  if (!metadata.face_detection) {
    for (const id of ["photo", "walk-photo"]) $(id).title = "This server has no face detector: photos must be aligned crops.";
  }
  await loadSeed(randomSeed());
}

on("another", "click", () => loadSeed(randomSeed()));
on("load-seed", "click", () => loadSeed(Number($("seed").value)));
on("seed", "keydown", (e) => (e.key === "Enter" ? loadSeed(Number($("seed").value)) : undefined));
on("photo", "change", (e) => (e.target.files[0] ? loadPhoto(e.target.files[0]) : undefined));
on("use-latent", "click", () => loadLatent($("latent-input").value));
on("add-attribute", "click", () => addSlider($("attribute-picker").value));
on("reset", "click", resetSliders);
on("walk", "click", interpolate);
on("walk-seed", "input", () => {
  $("walk-photo").value = "";
});
on("copy-latent", "click", copyLatent);
document.addEventListener("DOMContentLoaded", () => guarded(start));
