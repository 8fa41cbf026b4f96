/* plantid field app: up to 5 photos of one plant -> one answer, computed on this device.

   The model (ONNX, with the temperature and the unknown-photo score inside) runs with
   onnxruntime-web (WebAssembly). Every photo is predicted alone; the answer combines them with
   plantid.infer.group's rule: the mean of the calibrated log-probabilities, renormalized, and
   "unknown" when the mean OOD score is above the run's threshold. */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const info = self.PLANTID_MODEL_INFO;
  const MAX_PHOTOS = info.max_photos;
  const PROBABILITY_FLOOR = 1.1754943508222875e-38; // float32's smallest normal, as in plantid.infer.group
  const el = {
    chip: $("card-button"), chipText: $("chip-text"), camera: $("camera-input"), files: $("file-input"),
    cameraButton: $("camera-button"), fileButton: $("file-button"), thumbs: $("thumbs"), clear: $("clear-button"),
    error: $("error"), status: $("status"), empty: $("result-empty"), busy: $("result-busy"), result: $("result"),
    eyebrow: $("best-eyebrow"), label: $("best-label"), confidence: $("best-confidence"), bars: $("bars"),
    note: $("result-note"), card: $("model-card"),
  };
  const state = { session: null, photos: [], seq: 0, threads: 1 };

  // ------------------------------------------------------------------ the model

  function base64Bytes(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  async function gunzip(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function threadCount() {
    const asked = Number(new URLSearchParams(location.search).get("threads"));
    if (!self.crossOriginIsolated) return 1; // shared memory needs a cross-origin isolated page
    if (asked >= 1) return Math.floor(asked);
    return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
  }

  async function createSession() {
    const started = performance.now();
    state.threads = threadCount();
    ort.env.wasm.numThreads = state.threads;
    ort.env.wasm.wasmBinary = await gunzip(base64Bytes(self.PLANTID_ORT_WASM_GZ_B64));
    // file:// refuses module imports from files; a data: URL is allowed, and served pages use the file
    // itself (its pthread workers need a same-origin script)
    ort.env.wasm.wasmPaths = { mjs: location.protocol === "file:"
      ? "data:text/javascript;base64," + self.PLANTID_ORT_GLUE_B64
      : new URL("runtime/ort-wasm-simd-threaded.mjs", location.href).href };
    const model = await gunzip(base64Bytes(self.PLANTID_MODEL_GZ_B64));
    const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
    // int8 tensors read back in float: folded into float weights once, at load (as plantid does in Python)
    if (info.fold_dequantize) options.extra = { session: { disable_quant_qdq: "1" } };
    state.session = await ort.InferenceSession.create(model, options);
    state.loadMs = performance.now() - started;
    return state.session;
  }

  /* uint8 photos (each size x size x 3) -> [{probabilities: Float32Array, score: number|null}] in one run. */
  async function runModel(pixelsList) {
    const size = info.image_size, stride = size * size * 3;
    const batch = new Uint8Array(pixelsList.length * stride);
    pixelsList.forEach((pixels, i) => batch.set(pixels, i * stride));
    const feeds = { [info.input.name]: new ort.Tensor("uint8", batch, [pixelsList.length, size, size, 3]) };
    const out = await state.session.run(feeds);
    const probs = out[info.output.name].data, k = info.labels.length;
    const scores = info.trust && out[info.ood_score_name] ? out[info.ood_score_name].data : null;
    return pixelsList.map((_, i) => ({ probabilities: probs.slice(i * k, (i + 1) * k),
                                       score: scores ? scores[i] : null }));
  }

  /* plantid.infer.group.combine: softmax of the mean log-probability; unknown when the mean score is above the threshold. */
  function combine(results) {
    const k = info.labels.length, mean = new Float64Array(k);
    for (const r of results) for (let c = 0; c < k; c++) mean[c] += Math.log(Math.max(r.probabilities[c], PROBABILITY_FLOOR));
    let top = -Infinity;
    for (let c = 0; c < k; c++) { mean[c] /= results.length; top = Math.max(top, mean[c]); }
    let total = 0;
    const probabilities = Array.from(mean, (m) => { const w = Math.exp(m - top); total += w; return w; })
      .map((w) => w / total);
    const threshold = info.trust ? info.trust.threshold : null;
    const scored = threshold !== null && results.every((r) => typeof r.ood_score === "number");
    const score = scored ? results.reduce((s, r) => s + r.ood_score, 0) / results.length : null;
    return { probabilities, ood_score: score, unknown: scored ? score > threshold : null };
  }

  function ranked(probabilities, n) {
    return Array.from(probabilities, (p, i) => ({ label: info.labels[i], probability: p, index: i }))
      .sort((a, b) => b.probability - a.probability || a.index - b.index).slice(0, n);
  }

  /* Photo files -> per-photo results (decoded, resized and predicted here), for the page and for tests. */
  async function classifyBlobs(blobs) {
    const loaded = [];
    for (const blob of blobs) loaded.push(await plantidPreprocess.loadImage(blob, info.image_size));
    const results = await runModel(loaded.map((p) => p.pixels));
    return results.map((r, i) => ({ probabilities: Array.from(r.probabilities), ood_score: r.score,
      unknown: r.score === null || !info.trust ? null : r.score > info.trust.threshold,
      width: loaded[i].width, height: loaded[i].height }));
  }

  // ------------------------------------------------------------------ the page

  const percent = plantidBars.percent;

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = !text;
    if (text) el.status.textContent = text;
  }

  function setView(view) {
    el.empty.hidden = view !== "empty";
    el.busy.hidden = view !== "busy";
    el.result.hidden = view !== "result";
  }

  function renderThumbs() {
    el.thumbs.replaceChildren(...state.photos.map((photo, index) => {
      const li = document.createElement("li");
      li.className = "thumb" + (photo.result && photo.result.unknown ? " unknown" : "");
      const img = document.createElement("img");
      img.src = photo.url;
      img.alt = "Photo " + (index + 1) + " of this plant";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", "Remove photo " + (index + 1));
      remove.addEventListener("click", () => removePhoto(photo));
      li.append(img, remove);
      return li;
    }));
    const full = state.photos.length >= MAX_PHOTOS;
    for (const [input, label] of [[el.camera, el.cameraButton], [el.files, el.fileButton]]) {
      input.disabled = full || !state.session;
      label.setAttribute("aria-disabled", String(full || !state.session));
    }
    el.fileButton.textContent = state.photos.length ? "Add photos" : "Choose photos";
    el.cameraButton.lastElementChild.textContent = state.photos.length ? "Add a photo" : "Take a photo";
    el.clear.hidden = state.photos.length === 0;
  }

  function removePhoto(photo) {
    URL.revokeObjectURL(photo.url);
    state.photos = state.photos.filter((p) => p !== photo);
    renderThumbs();
    renderAnswer();
  }

  async function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length || !state.session) return;
    const room = MAX_PHOTOS - state.photos.length;
    showError(files.length > room ? "At most " + MAX_PHOTOS + " photos of one plant: " +
      (room > 0 ? "only the first " + room + " were added." : "remove one first.") : "");
    const seq = ++state.seq;
    const added = files.slice(0, Math.max(0, room)).map((file) => ({ file, url: URL.createObjectURL(file), result: null }));
    state.photos.push(...added);
    renderThumbs();
    setView("busy");
    el.status.textContent = "Looking at your photo…";
    const started = performance.now();
    for (const photo of added) {
      try {
        photo.result = (await classifyBlobs([photo.file]))[0];
      } catch (err) {
        state.photos = state.photos.filter((p) => p !== photo);
        URL.revokeObjectURL(photo.url);
        showError((photo.file.name || "That file") + ": " + (err && err.message ? err.message : err) +
          ". Choose a JPEG, PNG or WebP photo.");
      }
    }
    state.lastMs = (performance.now() - started) / Math.max(1, added.length);
    if (seq !== state.seq) return;
    renderThumbs();
    renderAnswer();
  }

  function renderAnswer() {
    const results = state.photos.filter((p) => p.result).map((p) => p.result);
    if (!results.length) { setView("empty"); return; }
    const answer = combine(results);
    const top = ranked(answer.probabilities, Math.min(5, info.labels.length));
    const n = info.labels.length;
    // the three answers of plantid.infer.answers: unknown, unsure below the run's answer level, or a species
    const level = info.trust && typeof info.trust.answer_level === "number" ? info.trust.answer_level : null;
    const unsure = !answer.unknown && level !== null && top.length > 1 && top[0].probability < level;
    el.result.classList.toggle("unknown", answer.unknown === true);
    el.result.classList.toggle("unsure", unsure);
    if (answer.unknown) {
      el.eyebrow.textContent = "Not one of the species I know";
      el.label.textContent = (results.length > 1 ? "These photos do" : "This photo does") +
        " not look like any of the " + n + " species this model knows";
      el.confidence.textContent = "Closest: " + top[0].label + " (" + percent(top[0].probability) +
        "), but treat the greyed guesses below with care: the plant may be something else entirely.";
    } else if (unsure) {
      el.eyebrow.textContent = "Unsure between two species";
      el.label.textContent = top[0].label + " or " + top[1].label;
      el.confidence.textContent = percent(top[0].probability) + " and " + percent(top[1].probability) +
        ": it looks like a species this model knows, but no single one reached " + percent(level) +
        ", the probability at which its named answers were right on photos it was not trained on. " +
        "Another photo of the same plant may settle it.";
    } else {
      el.eyebrow.textContent = "Best match";
      el.label.textContent = top[0].label;
      el.confidence.textContent = percent(top[0].probability) + " likely";
    }
    plantidBars.renderBars(el.bars, top, false);
    el.note.textContent = (answer.unknown ? "Closest species, shown only for reference" : (info.trust
      ? "Calibrated probabilities over the " : "Probabilities over the ") + n + " species this model knows") +
      (results.length > 1 ? ", combined from " + results.length + " photos of one plant (the mean of their log-probabilities)."
        : ", from one photo. Add more photos of the same plant for a surer answer.") +
      (state.lastMs ? " " + Math.round(state.lastMs) + " ms a photo on this device." : "");
    setView("result");
    el.status.textContent = answer.unknown ? "Not one of the species this model knows. Closest: " + top[0].label + "."
      : unsure ? "Unsure between " + top[0].label + " and " + top[1].label + "."
        : "Best match: " + top[0].label + ", " + percent(top[0].probability) + ".";
  }

  function renderCard() {
    const card = info.card;
    const set = (id, text) => { $(id).textContent = text; };
    set("card-accuracy", card.test_accuracy === null ? "not evaluated" : percent(card.test_accuracy) +
      (card.test_photos ? " of " + card.test_photos + " photos" : ""));
    set("card-count", String(info.labels.length));
    set("card-date", card.trained || "–");
    set("card-model", card.backbone + " · " + info.image_size + " px");
    set("card-weights", card.weights);
    set("card-runtime", "this device · " + state.threads + " thread" + (state.threads > 1 ? "s" : "") + " · onnxruntime-web " + info.runtime.version);
    set("card-unknown", info.trust ? "Photos unlike every species it knows are answered \u201cnot one of the species I know\u201d " +
      "(score above " + info.trust.threshold.toPrecision(4) + ", which keeps " + Math.round(info.trust.keep * 100) +
      "% of the validation photos of known species)." : "This model does not check whether a photo shows one of its species.");
    $("card-classes").replaceChildren(...info.labels.map((name) => Object.assign(document.createElement("li"), { textContent: name })));
  }

  el.camera.addEventListener("change", () => { addFiles(el.camera.files); el.camera.value = ""; });
  el.files.addEventListener("change", () => { addFiles(el.files.files); el.files.value = ""; });
  el.clear.addEventListener("click", () => {
    state.photos.forEach((p) => URL.revokeObjectURL(p.url));
    state.photos = [];
    state.seq++;
    showError("");
    renderThumbs();
    setView("empty");
  });
  el.chip.addEventListener("click", () => el.card.showModal());
  $("max-photos").textContent = String(MAX_PHOTOS);
  renderThumbs();

  const ready = createSession().then(() => {
    el.chip.dataset.state = "ready";
    el.chipText.textContent = info.labels.length + " species · about this model";
    renderCard();
    renderThumbs();
  }, (err) => {
    el.chip.dataset.state = "error";
    el.chipText.textContent = "Model unavailable";
    showError("The model could not be started in this browser: " + (err && err.message ? err.message : err));
    throw err;
  });

  if ("serviceWorker" in navigator && location.protocol.startsWith("http")) {
    navigator.serviceWorker.register("sw.js").catch(() => {}); // offline copies: best effort
  }

  self.plantidApp = { ready, classifyBlobs, runModel, combine, addFiles, info, threads: () => state.threads,
                      loadMs: () => state.loadMs };
})();
