// elman's page: each panel sends TF Serving `:predict` requests to the server that served the
// page and shows the answers. Plain JavaScript, no build step, no network beyond that server.
//
// Every panel has a `data-state` attribute: "loading", "missing" (no export), "ready", "busy",
// "done" or "error"; its errors are written into its `.error` element (role="alert").
"use strict";

const APPS = ["imdb", "translation", "captioning", "nextframe"];
const FRAME_SIZE = 64;
const TYPING_PAUSE_MS = 300;   // IMDB asks again once the typing has paused this long.
const MOVIE_FRAME_MS = 250;
const RECHECK_MS = 5000;       // How often a panel without a model asks again.

let examples = null;           // /examples.json, once loaded.

// Requests.

class ServerError extends Error {}

async function request(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ServerError(`Cannot reach elman serve at ${location.origin}: is it still running? ` +
                          "Start it again with: elman serve");
  }
  let body;
  try {
    body = await response.json();
  } catch (error) {
    throw new ServerError(`The server answered ${response.status} ${response.statusText} ` +
                          "with something that is not JSON: is this elman serve?");
  }
  if (!response.ok) {
    const error = new ServerError(body.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// One `:predict` request in the columnar format; returns `{output name: value}`.
async function predict(app, signature, inputs, outputNames) {
  const body = await request(`/v1/models/${app}:predict`, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({signature_name: signature, inputs: inputs}),
  });
  // TF Serving unwraps a signature's only output.
  return outputNames.length === 1 ? {[outputNames[0]]: body.outputs} : body.outputs;
}

// Panels.

function panel(app) { return document.getElementById(app); }

function setState(app, state, message) {
  const section = panel(app);
  section.dataset.state = state;
  const error = section.querySelector(".error");
  error.hidden = state !== "error";
  error.textContent = state === "error" ? message : "";
}

// Runs `work` for `app`'s panel: busy while it runs, then done or the error it raised.
// `ticket` keeps only the newest of overlapping requests (typing makes several).
const tickets = {};
async function run(app, work) {
  const ticket = (tickets[app] = (tickets[app] || 0) + 1);
  setState(app, "busy");
  try {
    const finish = await work();
    if (ticket !== tickets[app]) return;
    finish();
    setState(app, "done");
  } catch (error) {
    if (ticket !== tickets[app]) return;
    setState(app, "error", error.message);
    if (error instanceof ServerError && error.status === 404) checkModels();
  }
}

function showMissing(app) {
  const section = panel(app);
  const missing = section.querySelector(".missing");
  missing.hidden = false;
  missing.innerHTML = "";
  missing.append(`No export of ${app} is served yet. Make one with `,
                 code(`elman train ${app} && elman export ${app}`),
                 "; this page picks it up within seconds.");
  section.querySelector(".version").textContent = "";
  section.dataset.state = "missing";
}

function code(text) {
  const element = document.createElement("code");
  element.textContent = text;
  return element;
}

const served = {};

async function checkModels() {
  const status = document.getElementById("server-status");
  let missingAny = false;
  try {
    for (const app of APPS) {
      try {
        const body = await request(`/v1/models/${app}`);
        const version = body.model_version_status[0].version;
        if (served[app] !== version) {
          served[app] = version;
          panel(app).querySelector(".missing").hidden = true;
          panel(app).querySelector(".version").textContent = `version ${version}`;
          if (panel(app).dataset.state === "missing" || panel(app).dataset.state === "loading") {
            panel(app).dataset.state = "ready";
          }
        }
      } catch (error) {
        if (!(error instanceof ServerError) || error.status !== 404) throw error;
        delete served[app];
        missingAny = true;
        showMissing(app);
      }
    }
    const names = Object.keys(served);
    status.classList.remove("down");
    status.textContent = names.length ?
      `Serving ${names.map((app) => `${app} (version ${served[app]})`).join(", ")}.` :
      "No model is exported yet: run elman train APP && elman export APP.";
  } catch (error) {
    missingAny = true;
    status.classList.add("down");
    status.textContent = error.message;
  }
  if (missingAny) setTimeout(checkModels, RECHECK_MS);
}

function exampleButtons(containerId, items, onPick) {
  const container = document.getElementById(containerId);
  container.innerHTML = "";
  for (const item of items) {
    const button = document.createElement("button");
    button.type = "button";
    if (item.image) {
      const image = document.createElement("img");
      image.src = item.image;
      image.alt = item.label;
      button.append(image);
    } else {
      button.textContent = item.label;
    }
    button.addEventListener("click", () => onPick(item));
    container.append(button);
  }
}

// IMDB: the probability as a bar and the label, updated as the person types.

function setUpImdb() {
  const box = document.getElementById("imdb-text");
  let timer = null;
  const ask = () => {
    const review = box.value;
    if (!review.trim()) {
      tickets.imdb = (tickets.imdb || 0) + 1;
      showImdb(null);
      setState("imdb", "error", "Type a review (or click an example) to see its sentiment.");
      return;
    }
    run("imdb", async () => {
      const outputs = await predict("imdb", "serving_default", {review: [review]},
                                    ["probability", "label"]);
      return () => showImdb(outputs.probability[0], outputs.label[0]);
    });
  };
  box.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(ask, TYPING_PAUSE_MS);
  });
  exampleButtons("imdb-examples", examples.imdb.reviews.map((text) => ({label: text})),
                 (item) => { box.value = item.label; clearTimeout(timer); ask(); });
}

function showImdb(probability, label) {
  const bar = document.getElementById("imdb-bar");
  document.getElementById("imdb-label").textContent = label || "";
  document.getElementById("imdb-probability").textContent =
    probability === null ? "" : `p(positive) = ${probability.toFixed(3)}`;
  bar.style.width = probability === null ? "0" : `${(probability * 100).toFixed(1)}%`;
}

// Translation: greedy and beam search side by side.

function setUpTranslation() {
  const box = document.getElementById("translation-text");
  const beamWidth = examples.translation.beam_width;
  document.getElementById("translation-beam-width").textContent = `(width ${beamWidth})`;
  const translate = () => {
    const sentence = box.value;
    if (!sentence.trim()) {
      setState("translation", "error", "Type an English sentence to translate.");
      return;
    }
    run("translation", async () => {
      const [greedy, beam] = await Promise.all([
        predict("translation", "serving_default", {sentence: [sentence]}, ["translation"]),
        predict("translation", "beam_search", {sentence: [sentence], beam_width: beamWidth},
                ["translation", "log_probability"]),
      ]);
      return () => {
        document.getElementById("translation-greedy").textContent = greedy.translation[0];
        document.getElementById("translation-beam").textContent = beam.translation[0];
        document.getElementById("translation-log-probability").textContent =
          `log-probability ${beam.log_probability[0].toFixed(3)}`;
      };
    });
  };
  document.getElementById("translation-form").addEventListener("submit", (event) => {
    event.preventDefault();
    translate();
  });
  exampleButtons("translation-examples",
                 examples.translation.sentences.map((text) => ({label: text})),
                 (item) => { box.value = item.label; translate(); });
}

// Captioning: an uploaded, dropped or example picture and its captions.

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let start = 0; start < bytes.length; start += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(start, start + 0x8000));
  }
  return btoa(text);
}

function captionPicture(blob, name) {
  const image = document.getElementById("captioning-image");
  for (const id of ["captioning-greedy", "captioning-beam"]) {
    document.getElementById(id).textContent = "";
  }
  image.hidden = true;
  if (!blob.size) {
    setState("captioning", "error", `${name} is empty: choose a JPEG or PNG picture.`);
    return;
  }
  const beamWidth = examples.captioning.beam_width;
  run("captioning", async () => {
    const bytes = {b64: toBase64(await blob.arrayBuffer())};
    const [greedy, beam] = await Promise.all([
      predict("captioning", "serving_default", {image_bytes: [bytes]}, ["caption", "valid"]),
      predict("captioning", "beam_search", {image_bytes: [bytes], beam_width: beamWidth},
              ["caption", "valid"]),
    ]);
    if (!greedy.valid[0]) {
      throw new Error(`${name} is not a complete JPEG or PNG image: choose a photo.`);
    }
    return () => {
      URL.revokeObjectURL(image.src);
      image.src = URL.createObjectURL(blob);
      image.alt = `${name}: ${greedy.caption[0]}`;
      image.hidden = false;
      document.getElementById("captioning-greedy").textContent = greedy.caption[0];
      document.getElementById("captioning-beam").textContent = beam.caption[0];
    };
  });
}

function setUpCaptioning() {
  const input = document.getElementById("captioning-file");
  const drop = document.getElementById("captioning-drop");
  document.getElementById("captioning-beam-width").textContent =
    `(width ${examples.captioning.beam_width})`;
  input.addEventListener("change", () => {
    if (input.files.length) captionPicture(input.files[0], input.files[0].name);
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) captionPicture(file, file.name);
  });
  exampleButtons("captioning-examples",
                 examples.captioning.images.map((url, index) => ({
                   label: `example picture ${index + 1}`, image: url})),
                 async (item) => {
                   let blob;
                   try {
                     const response = await fetch(item.image);
                     if (!response.ok) throw new Error(`Cannot load ${item.image}.`);
                     blob = await response.blob();
                   } catch (error) {
                     setState("captioning", "error", error instanceof TypeError ?
                              `Cannot reach elman serve at ${location.origin}: is it still ` +
                              "running?" : error.message);
                     return;
                   }
                   captionPicture(blob, item.label);
                 });
}

// Next frame: the given frames, the truth and the prediction, as movies and strips.

// A `.npy` file -> frames, an array of Uint8Array(64 * 64); or an error saying what is wrong.
function parseNpy(buffer, name) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(1, 6));
  if (bytes.length < 10 || bytes[0] !== 0x93 || magic !== "NUMPY") {
    throw new Error(`${name} is not a .npy file (numpy.save writes them).`);
  }
  const view = new DataView(buffer);
  const headerStart = bytes[6] === 1 ? 10 : 12;
  const headerLength = bytes[6] === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const header = new TextDecoder().decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = (header.match(/'descr':\s*'([^']+)'/) || [])[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = ((header.match(/'shape':\s*\(([^)]*)\)/) || [])[1] || "")
    .split(",").map((size) => size.trim()).filter((size) => size).map(Number);
  const types = {"|u1": Uint8Array, "<u1": Uint8Array, "<f4": Float32Array, "<f8": Float64Array};
  if (!(descr in types) || fortran) {
    throw new Error(`${name}: expected uint8 (0-255) or float32/float64 (0-1) frames in C order, ` +
                    `received dtype ${descr}${fortran ? " in Fortran order" : ""}.`);
  }
  let dims = shape.slice();
  if (dims.length === 5 && dims[0] === 1) dims = dims.slice(1);
  if (dims.length === 4 && dims[3] === 1) dims = dims.slice(0, 3);
  if (dims.length === 4 && dims[0] === 1) dims = dims.slice(1);
  if (dims.length !== 3 || dims[1] !== FRAME_SIZE || dims[2] !== FRAME_SIZE || dims[0] < 1) {
    throw new Error(`${name}: frames must have shape (time, 64, 64), (time, 64, 64, 1) or ` +
                    `(1, time, 64, 64, 1), received (${shape.join(", ")}).`);
  }
  const Type = types[descr];
  const start = headerStart + headerLength;
  const values = new Type(buffer.slice(start, start + dims[0] * FRAME_SIZE * FRAME_SIZE *
                                       Type.BYTES_PER_ELEMENT));
  if (values.length !== dims[0] * FRAME_SIZE * FRAME_SIZE) {
    throw new Error(`${name} is shorter than its shape says: cut off?`);
  }
  let pixels = values;
  if (Type !== Uint8Array) {
    pixels = new Uint8Array(values.length);
    for (let index = 0; index < values.length; index++) {
      const value = values[index];
      if (!(value >= 0 && value <= 1)) {
        throw new Error(`${name}: float frames must be in [0, 1] (or save uint8 pixels), ` +
                        `received ${value}.`);
      }
      pixels[index] = Math.round(value * 255);
    }
  }
  const frames = [];
  for (let time = 0; time < dims[0]; time++) {
    frames.push(pixels.slice(time * FRAME_SIZE * FRAME_SIZE, (time + 1) * FRAME_SIZE * FRAME_SIZE));
  }
  return frames;
}

function drawFrame(canvas, pixels) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(FRAME_SIZE, FRAME_SIZE);
  for (let index = 0; index < pixels.length; index++) {
    image.data.set([pixels[index], pixels[index], pixels[index], 255], index * 4);
  }
  context.putImageData(image, 0, 0);
}

function drawStrip(id, frames, label) {
  const strip = document.getElementById(id);
  strip.innerHTML = "";
  frames.forEach((pixels, index) => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = FRAME_SIZE;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${label} frame ${index + 1}`);
    drawFrame(canvas, pixels);
    strip.append(canvas);
  });
}

// Sum of squared errors per frame on [0, 1] pixels, averaged over frames (as `elman evaluate`).
function meanSquaredError(frames, truth) {
  let total = 0;
  frames.forEach((pixels, time) => {
    for (let index = 0; index < pixels.length; index++) {
      total += ((pixels[index] - truth[time][index]) / 255) ** 2;
    }
  });
  return total / frames.length;
}

const movie = {timer: null, frame: 0, given: [], truth: null, predicted: []};

function playMovie() {
  clearInterval(movie.timer);
  const pause = document.getElementById("nextframe-pause");
  pause.disabled = false;
  pause.textContent = "Pause";
  const length = movie.given.length + movie.predicted.length;
  const step = () => {
    const time = movie.frame % length;
    const given = time < movie.given.length;
    const later = time - movie.given.length;
    drawFrame(document.getElementById("nextframe-predicted-movie"),
              given ? movie.given[time] : movie.predicted[later]);
    if (movie.truth) {
      drawFrame(document.getElementById("nextframe-truth-movie"),
                given ? movie.given[time] : movie.truth[later]);
    }
    document.getElementById("nextframe-frame").textContent =
      `frame ${time + 1} of ${length} (${given ? "given" : "predicted"})`;
    movie.frame += 1;
  };
  step();
  movie.timer = setInterval(step, MOVIE_FRAME_MS);
}

function predictFrames(given, truth) {
  const count = examples.nextframe.output_frames;
  run("nextframe", async () => {
    // (1, time, 64, 64, 1) uint8 pixels: the serving_uint8 signature.
    const frames = [given.map((pixels) => {
      const rows = [];
      for (let row = 0; row < FRAME_SIZE; row++) {
        rows.push(Array.from(pixels.subarray(row * FRAME_SIZE, (row + 1) * FRAME_SIZE),
                             (value) => [value]));
      }
      return rows;
    })];
    const outputs = await predict("nextframe", "serving_uint8",
                                  {frames: frames, num_frames: count},
                                  ["predicted_frames", "valid"]);
    const predicted = outputs.predicted_frames[0].map(
      (frame) => Uint8Array.from(frame.flat(2)));
    return () => {
      Object.assign(movie, {frame: 0, given: given, truth: truth, predicted: predicted});
      drawStrip("nextframe-given", given, "given");
      drawStrip("nextframe-truth", truth || [], "true");
      drawStrip("nextframe-predicted", predicted, "predicted");
      const truthMovie = document.getElementById("nextframe-truth-movie");
      truthMovie.parentElement.hidden = !truth;
      let summary = `${predicted.length} frames predicted after ${given.length}.`;
      if (truth) {
        const copyLast = truth.map(() => given[given.length - 1]);
        summary += ` Squared error per frame ${meanSquaredError(predicted, truth).toFixed(1)}` +
          ` (copying the last frame: ${meanSquaredError(copyLast, truth).toFixed(1)}).`;
      }
      document.getElementById("nextframe-summary").textContent = summary;
      playMovie();
    };
  });
}

function setUpNextframe() {
  const select = document.getElementById("nextframe-sequence");
  for (let index = 0; index < examples.nextframe.sequences; index++) {
    const option = document.createElement("option");
    option.value = option.textContent = String(index);
    select.append(option);
  }
  document.getElementById("nextframe-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const sequence = await request(`/examples/nextframe/${select.value}.json`);
      const frames = (list) => list.map((frame) => Uint8Array.from(frame.flat()));
      predictFrames(frames(sequence.frames), frames(sequence.truth));
    } catch (error) {
      setState("nextframe", "error", error.message);
    }
  });
  const input = document.getElementById("nextframe-file");
  input.addEventListener("change", async () => {
    const file = input.files[0];
    input.value = "";
    if (!file) return;
    try {
      predictFrames(parseNpy(await file.arrayBuffer(), file.name), null);
    } catch (error) {
      setState("nextframe", "error", error.message);
    }
  });
  const pause = document.getElementById("nextframe-pause");
  pause.addEventListener("click", () => {
    if (movie.timer) {
      clearInterval(movie.timer);
      movie.timer = null;
      pause.textContent = "Play";
    } else {
      playMovie();
    }
  });
}

// Start.

async function start() {
  try {
    examples = await request("/examples.json");
  } catch (error) {
    const status = document.getElementById("server-status");
    status.classList.add("down");
    status.textContent = `${error.message} (the page needs elman serve for its examples)`;
    for (const app of APPS) setState(app, "error", error.message);
    return;
  }
  setUpImdb();
  setUpTranslation();
  setUpCaptioning();
  setUpNextframe();
  await checkModels();
  document.body.dataset.ready = "true";
}

start();
