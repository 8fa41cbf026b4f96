/* plantid page: choose or drop up to 5 photos of one plant, ask /api/identify (one combined
   answer), optionally show /api/gradcam for the photo on display. */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  const el = {
    chip: $("model-chip"),
    chipText: $("model-chip-text"),
    input: $("file-input"),
    dropzone: $("dropzone"),
    dropTarget: $("drop-target"),
    changePhoto: $("change-photo"),
    maxSize: $("max-size"),
    preview: $("preview"),
    previewFrame: $("preview-frame"),
    previewImg: $("preview-img"),
    previewCaption: $("preview-caption"),
    previewFallback: $("preview-fallback"),
    overlay: $("overlay-img"),
    camBusy: $("cam-busy"),
    camToggle: $("cam-toggle"),
    camHelp: $("cam-help"),
    camExtra: $("cam-extra"),
    camStrength: $("cam-strength"),
    status: $("status"),
    error: $("error"),
    errorTitle: $("error-title"),
    errorText: $("error-text"),
    empty: $("result-empty"),
    loading: $("result-loading"),
    result: $("result"),
    best: $("best"),
    bestEyebrow: $("best-eyebrow"),
    bestLabel: $("best-label"),
    bestConfidence: $("best-confidence"),
    bars: $("bars"),
    resultNote: $("result-note"),
    timing: $("timing"),
    backendBadge: $("model-backend"),
    statBackbone: $("stat-backbone"),
    statAccuracy: $("stat-accuracy"),
    statBalanced: $("stat-balanced"),
    statF1: $("stat-f1"),
    statSize: $("stat-size"),
    statClasses: $("stat-classes"),
    statParams: $("stat-params"),
    f1List: $("f1-list"),
    f1Note: $("f1-note"),
    morePhotos: $("more-photos"),
    thumbs: $("thumbs"),
    addInput: $("add-input"),
    addPhoto: $("add-photo"),
  };
  const MAX_PHOTOS = 5; // plantid.infer.group.MAX_GROUP_PHOTOS

  const state = {
    model: null,
    maxUploadBytes: 10 * 1024 * 1024,
    file: null, // the photo on display (Grad-CAM explains it)
    files: [], // every photo of the plant, at most MAX_PHOTOS
    thumbUrls: [],
    previewUrl: null,
    prediction: null,
    camLabel: null, // the species the heat-map explains
    camCache: new Map(), // label -> data URL, for the current photo
    seq: 0, // increases with every new photo: late answers for an old photo are dropped
    camSeq: 0,
  };

  // ------------------------------------------------------------------ small shared functions

  const percent = plantidBars.percent;

  function formatBytes(n) {
    const nbsp = "\u00a0";
    if (n >= 1024 * 1024) return (n / (1024 * 1024)).toFixed(n % (1024 * 1024) ? 1 : 0) + nbsp + "MB";
    if (n >= 1024) return Math.round(n / 1024) + nbsp + "KB";
    return n + nbsp + (n === 1 ? "byte" : "bytes");
  }

  function formatCount(n) {
    if (!isFinite(n)) return "–";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "\u00a0M";
    if (n >= 1e3) return (n / 1e3).toFixed(0) + "\u00a0k";
    return String(n);
  }

  function announce(text) {
    el.status.textContent = text;
  }

  async function readError(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      detail = response.statusText || "";
    }
    return detail || "the server answered " + response.status;
  }

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
  }

  function showError(title, message) {
    el.errorTitle.textContent = title;
    el.errorText.textContent = capitalise(message);
    el.error.hidden = false;
    announce(title + ". " + message);
  }

  function clearError() {
    el.error.hidden = true;
    el.errorText.textContent = "";
  }

  function setResultView(view) {
    el.empty.hidden = view !== "empty";
    el.loading.hidden = view !== "loading";
    el.result.hidden = view !== "result";
  }

  // ------------------------------------------------------------------ model card

  async function loadModel() {
    try {
      const response = await fetch("/api/model", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(await readError(response));
      const model = await response.json();
      state.model = model;
      renderModel(model);
    } catch (err) {
      el.chip.dataset.state = "error";
      el.chipText.textContent = "Model unavailable";
      showError("The model could not be loaded", String(err.message || err) +
        ". Is `plantid serve` still running?");
    }
  }

  function setStat(node, text) {
    node.textContent = text;
    node.classList.toggle("na", text === "–" || text === "not evaluated");
  }

  function renderModel(model) {
    el.chip.dataset.state = "ready";
    el.chipText.textContent = model.model_id;
    el.chip.title = "Model " + model.model_id + " · " + model.backend + " backend";
    el.backendBadge.textContent = model.backend;
    if (model.max_upload_bytes) {
      state.maxUploadBytes = model.max_upload_bytes;
      el.maxSize.textContent = formatBytes(model.max_upload_bytes);
    }
    setStat(el.statBackbone, model.backbone || "–");
    el.statBackbone.title = model.backbone || "";
    const intervals = model.intervals || {};
    setStat(el.statAccuracy, model.test_accuracy !== null ? percent(model.test_accuracy) : "–");
    setStat(el.statBalanced, model.balanced_accuracy !== null ? percent(model.balanced_accuracy) : "–");
    el.statAccuracy.title = range95(intervals.accuracy);
    el.statBalanced.title = range95(intervals.balanced_accuracy);
    setStat(el.statF1, model.macro_f1 !== null ? model.macro_f1.toFixed(3) : "–");
    setStat(el.statSize, model.image_size + " × " + model.image_size + " px");
    setStat(el.statClasses, String(model.classes.length));
    setStat(el.statParams, model.parameters ? formatCount(model.parameters) : "–");

    el.f1List.replaceChildren();
    const f1 = model.per_class_f1 || {};
    const evaluated = model.evaluated && Object.keys(f1).length > 0;
    if (evaluated) {
      el.f1Note.hidden = true;
      el.f1List.className = "f1-list";
      for (const name of model.classes) {
        const value = f1[name];
        const li = document.createElement("li");
        const label = document.createElement("span");
        label.className = "f1-name";
        label.textContent = name;
        label.title = name;
        const number = document.createElement("span");
        number.className = "f1-value";
        number.textContent = value === null || value === undefined ? "–" : value.toFixed(2);
        const track = document.createElement("span");
        track.className = "f1-track";
        track.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.className = "f1-fill";
        fill.style.display = "block";
        fill.style.width = Math.max(0, Math.min(1, value || 0)) * 100 + "%";
        track.append(fill);
        li.append(label, number, track);
        li.setAttribute("aria-label", name + ": F1 " + number.textContent);
        el.f1List.append(li);
      }
    } else {
      el.f1Note.hidden = false;
      el.f1Note.replaceChildren(
        document.createTextNode("Not evaluated yet. Run "),
        Object.assign(document.createElement("code"), { textContent: "plantid evaluate RUN" }),
        document.createTextNode(" to see how well each species is recognised."),
      );
      el.f1List.className = "chips";
      el.f1List.setAttribute("aria-label", "Species the model knows");
      for (const name of model.classes) {
        const li = document.createElement("li");
        li.className = "chip";
        li.textContent = name;
        el.f1List.append(li);
      }
    }

    if (!model.gradcam_available) {
      el.camToggle.disabled = true;
      el.camHelp.textContent = "The heat-map needs the torch backend (this server runs " + model.backend +
        "). Restart with `plantid serve RUN --backend torch` to use it.";
    }
  }

  // ------------------------------------------------------------------ choosing a photo

  function acceptFiles(list, adding) {
    const chosen = Array.from(list || []).filter(Boolean);
    if (!chosen.length) return;
    const kept = adding ? state.files.slice() : [];
    const room = MAX_PHOTOS - kept.length;
    if (chosen.length > room) {
      showError("At most " + MAX_PHOTOS + " photos of one plant", "Only the first " + Math.max(room, 0) +
        " of the " + chosen.length + " chosen photos were added.");
    }
    const files = kept.concat(chosen.slice(0, Math.max(room, 0)));
    if (!files.length) return;
    acceptFile(files, chosen.length <= room);
  }

  function acceptFile(files, clear) {
    const file = files[files.length - 1];
    if (clear !== false) clearError();
    state.seq += 1;
    state.files = files;
    state.file = file;
    state.prediction = null;
    state.camCache = new Map();
    state.camLabel = null;
    hideOverlay();
    showPreview(file);
    resetCamHelp();
    renderThumbs();
    const large = files.find((f) => f.size > state.maxUploadBytes);
    if (large) {
      const file = large;
      state.files = [];
      renderThumbs();
      setResultView("empty");
      resetPhoto();
      el.camToggle.checked = false;
      el.timing.textContent = "";
      showError("That photo is too large", "It is " + formatBytes(file.size) + "; the limit is " +
        formatBytes(state.maxUploadBytes) + ". Choose a smaller photo.");
      updateCamControls();
      return;
    }
    predict(files, state.seq);
  }

  function renderThumbs() {
    state.thumbUrls.forEach((url) => URL.revokeObjectURL(url));
    state.thumbUrls = state.files.map((f) => URL.createObjectURL(f));
    el.thumbs.replaceChildren();
    state.files.forEach((file, index) => {
      const li = document.createElement("li");
      li.className = "thumb" + (file === state.file ? " current" : "");
      const img = document.createElement("img");
      img.src = state.thumbUrls[index];
      img.alt = "Photo " + (index + 1) + ": " + (file.name || "photo");
      img.addEventListener("click", () => { state.file = file; showPreview(file); renderThumbs(); });
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "thumb-remove";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", "Remove photo " + (index + 1));
      remove.addEventListener("click", () => {
        const rest = state.files.filter((f) => f !== file);
        if (rest.length) acceptFile(rest);
        else { state.files = []; renderThumbs(); resetPhoto(); setResultView("empty"); }
      });
      li.append(img, remove);
      el.thumbs.append(li);
    });
    el.morePhotos.hidden = state.files.length === 0;
    const full = state.files.length >= MAX_PHOTOS;
    el.addInput.disabled = full;
    el.addPhoto.setAttribute("aria-disabled", full ? "true" : "false");
  }

  function showPreview(file) {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    el.previewFallback.hidden = true;
    el.previewFrame.classList.remove("no-preview");
    el.previewImg.alt = "Your photo: " + (file.name || "pasted image");
    el.previewImg.src = state.previewUrl;
    el.previewCaption.textContent = (file.name || "Pasted image") + " · " + formatBytes(file.size);
    el.dropTarget.hidden = true;
    el.preview.hidden = false;
    el.changePhoto.hidden = false;
    el.dropzone.dataset.state = "photo";
  }

  function resetPhoto() {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = null;
    state.file = null;
    el.previewImg.removeAttribute("src");
    el.preview.hidden = true;
    el.dropTarget.hidden = false;
    el.changePhoto.hidden = true;
    el.dropzone.dataset.state = "empty";
    el.input.value = "";
  }

  el.previewImg.addEventListener("load", () => {
    const w = el.previewImg.naturalWidth, h = el.previewImg.naturalHeight;
    if (w > 0 && h > 0) el.previewFrame.style.setProperty("--ar", String(w / h));
  });

  el.previewImg.addEventListener("error", () => {
    if (!el.previewImg.getAttribute("src")) return;
    el.previewFrame.style.setProperty("--ar", "1.333");
    el.previewFrame.classList.add("no-preview");
    el.previewFallback.hidden = false;
  });

  el.input.addEventListener("change", () => {
    if (el.input.files && el.input.files.length) acceptFiles(el.input.files, false);
    el.input.value = ""; // so that choosing the same file again still counts as a change
  });

  el.addInput.addEventListener("change", () => {
    if (el.addInput.files && el.addInput.files.length) acceptFiles(el.addInput.files, true);
    el.addInput.value = "";
  });

  // drag and drop: anywhere on the page, highlighted on the drop zone
  let dragDepth = 0;
  function hasFiles(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  }
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    el.dropzone.classList.add("dragging");
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) el.dropzone.classList.remove("dragging");
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    el.dropzone.classList.remove("dragging");
    const files = event.dataTransfer.files;
    if (files && files.length) acceptFiles(files, state.files.length > 0);
  });

  // paste an image from the clipboard
  window.addEventListener("paste", (event) => {
    const items = (event.clipboardData && event.clipboardData.files) || [];
    if (items.length) {
      event.preventDefault();
      acceptFiles(items, state.files.length > 0);
    }
  });

  // ------------------------------------------------------------------ prediction

  async function predict(files, seq) {
    setResultView("loading");
    el.timing.textContent = "";
    announce("Identifying the plant…");
    updateCamControls();
    const form = new FormData();
    files.forEach((file, i) => form.append("files", file, file.name || "photo " + (i + 1)));
    let response;
    try {
      response = await fetch("/api/identify", { method: "POST", body: form });
    } catch (err) {
      if (seq !== state.seq) return;
      setResultView("empty");
      showError("Could not reach the server", "Check that `plantid serve` is still running, then try again.");
      return;
    }
    if (seq !== state.seq) return;
    if (!response.ok) {
      const message = await readError(response);
      if (seq !== state.seq) return;
      setResultView("empty");
      state.files = [];
      renderThumbs();
      resetPhoto();
      el.camToggle.checked = false;
      resetCamHelp();
      showError(errorTitle(response.status), message);
      updateCamControls();
      return;
    }
    const body = await response.json();
    if (seq !== state.seq) return;
    state.prediction = body;
    state.camLabel = body.top_k.length ? body.top_k[0].label : null;
    renderPrediction(body);
    updateCamControls();
    if (el.camToggle.checked) showGradcam();
  }

  // "95% interval 78.1–93.5%": how far the measured value may be from the truth on so few photos
  function range95(bounds) {
    return Array.isArray(bounds) && bounds.length === 2
      ? "95% interval " + (100 * bounds[0]).toFixed(1) + "–" + (100 * bounds[1]).toFixed(1) + "%" : "";
  }

  function errorTitle(status) {
    if (status === 413) return "That photo is too large";
    if (status === 415) return "That file is not a photo we can read";
    if (status === 400 || status === 422) return "That file can't be used";
    if (status >= 500) return "The server ran into a problem";
    return "Something went wrong";
  }

  function renderPrediction(body) {
    const top = body.top_k[0];
    const kind = body.answer ? body.answer.kind : (body.unknown === true ? "unknown" : "species");
    const unknown = kind === "unknown";
    const unsure = kind === "unsure";
    const known = state.model ? state.model.classes.length : null;
    const level = typeof body.answer_level === "number" ? percent(body.answer_level) : null;
    el.result.classList.toggle("unknown", unknown);
    el.best.classList.toggle("unknown", unknown);
    el.best.classList.toggle("unsure", unsure);
    if (unknown) {
      el.bestEyebrow.textContent = "Not one of the " + (known ? known + " " : "") + "species";
      el.bestLabel.textContent = "This photo does not look like any of the " +
        (known ? known + " " : "") + "species this model knows";
      el.bestConfidence.textContent = "It may show another plant or something else, or be taken very differently. " +
        "Closest: " + top.label + " (" + percent(top.probability) + "), greyed below for reference only.";
    } else if (unsure) {
      const second = body.top_k[1];
      el.bestEyebrow.textContent = "Unsure between two species";
      el.bestLabel.textContent = top.label + " or " + second.label;
      el.bestConfidence.textContent = percent(top.probability) + " and " + percent(second.probability) +
        ": it looks like a species this model knows, but no single one reached " + (level || "the level") +
        ", the probability at which its named answers were right on photos it was not trained on. " +
        "A closer or sharper photo may settle it.";
    } else {
      el.bestEyebrow.textContent = "Best match";
      el.bestLabel.textContent = top.label;
      el.bestConfidence.textContent = percent(top.probability) + " likely";
    }
    plantidBars.renderBars(el.bars, body.top_k, true);
    const photos = body.photos || [];
    const first = photos.length ? photos[0].image : body.image;
    const size = photos.length > 1 ? photos.length + " photos of one plant combined (the mean of their log-probabilities)"
      : "this " + (first && first.width ? first.width + " × " + first.height + " px photo" : "photo");
    el.resultNote.textContent = (unknown ? "Closest species, shown only for reference: probabilities over the "
      : (body.calibrated ? "Calibrated probabilities over the " : "Probabilities over the ")) +
      (known ? known + " " : "") + "species the model was trained on, for " + size + "." +
      (body.unknown === null || body.unknown === undefined
        ? " This model does not check whether a photo shows one of its species at all."
        : "");
    el.timing.textContent = Math.round(body.elapsed_ms) + " ms";
    setResultView("result");
    announce(unknown
      ? "This photo does not look like any of the species this model knows. Closest: " + top.label + "."
      : unsure ? "Unsure between " + top.label + " and " + body.top_k[1].label + "."
      : "Best match: " + top.label + ", " + percent(top.probability) + ".");
  }

  // ------------------------------------------------------------------ Grad-CAM

  function updateCamControls() {
    const available = !state.model || state.model.gradcam_available;
    el.camToggle.disabled = !(available && state.prediction);
    el.camExtra.hidden = !(el.camToggle.checked && state.prediction);
  }

  const defaultCamHelp = el.camHelp.textContent;
  function resetCamHelp() {
    if (!state.model || state.model.gradcam_available) el.camHelp.textContent = defaultCamHelp;
  }

  function hideOverlay() {
    el.overlay.classList.remove("visible");
    el.overlay.hidden = true;
    el.overlay.removeAttribute("src");
    el.overlay.alt = "";
    el.camBusy.hidden = true;
  }

  function showOverlay(url, label) {
    el.overlay.alt = "Heat-map over your photo: warm colours mark the regions that made the model answer " + label;
    el.overlay.src = url;
    el.overlay.hidden = false;
    requestAnimationFrame(() => el.overlay.classList.add("visible"));
    el.camHelp.textContent = "Warm colours mark the regions that pushed the model towards " + label + ".";
  }

  async function showGradcam() {
    if (!state.prediction || !state.file) return;
    const label = state.camLabel;
    const seq = state.seq;
    const camSeq = ++state.camSeq;
    el.camExtra.hidden = false;
    if (state.camCache.has(label)) {
      showOverlay(state.camCache.get(label), label);
      return;
    }
    el.camBusy.hidden = false;
    announce("Computing the heat-map…");
    const form = new FormData();
    form.append("file", state.file, state.file.name || "photo");
    form.append("label", label);
    try {
      const response = await fetch("/api/gradcam", { method: "POST", body: form });
      if (seq !== state.seq || camSeq !== state.camSeq) return;
      if (!response.ok) {
        const message = await readError(response);
        if (seq !== state.seq) return;
        el.camBusy.hidden = true;
        el.camToggle.checked = false;
        updateCamControls();
        showError("The heat-map could not be made", message);
        return;
      }
      const body = await response.json();
      if (seq !== state.seq || camSeq !== state.camSeq) return;
      const url = "data:image/png;base64," + body.heatmap_png;
      state.camCache.set(body.label, url);
      el.camBusy.hidden = true;
      if (el.camToggle.checked) {
        showOverlay(url, body.label);
        announce("Heat-map shown for " + body.label + ".");
      }
    } catch (err) {
      if (seq !== state.seq) return;
      el.camBusy.hidden = true;
      el.camToggle.checked = false;
      updateCamControls();
      showError("Could not reach the server", "Check that `plantid serve` is still running, then try again.");
    }
  }

  el.camToggle.addEventListener("change", () => {
    updateCamControls();
    if (el.camToggle.checked) {
      showGradcam();
    } else {
      state.camSeq += 1;
      hideOverlay();
      resetCamHelp();
      announce("Heat-map hidden.");
    }
  });

  el.camStrength.addEventListener("input", () => {
    el.overlay.style.setProperty("--cam-opacity", String(el.camStrength.value / 100));
  });

  loadModel();
})();
