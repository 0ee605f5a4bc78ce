// The page: pick a model, give it an input, see its prediction as you edit, explain one class
// with the chosen options while the progress streams in, and compare runs side by side.

import * as api from "./api.js";
import { buildEditor, element } from "./inputs.js";
import { messageCard, resultCard } from "./results.js";

const $ = (id) => document.getElementById(id);

/** The baselines each kind of input offers: a label and the `baseline` parameter. */
const BASELINES = {
  image: [
    ["black", "black"],
    ["white", "white"],
    ["blur", null], // {"blur": {"sigma": ...}}, from the sigma field
    ["uniform noise", "uniform"],
    ["zeros (the normalised mean colour)", "zeros"],
  ],
  text: [
    ["[PAD] tokens", "pad"],
    ["[UNK] tokens", "unk"],
    ["[MASK] tokens", "mask"],
  ],
  tabular: [
    ["the model's default (reference median)", ""],
    ["zeros", "zeros"],
    ["16 reference rows (expected gradients)", { reference: { statistic: "REFERENCE_STATISTIC_ROWS", rows: 16 } }],
  ],
  tensor: [
    ["zeros", "zeros"],
    ["uniform noise", "uniform"],
  ],
};

const state = {
  models: [],
  model: null,
  editor: null,
  /** The class to explain; null: the top one. */
  target: null,
  /** The Explain (or comparison) in progress. */
  running: null,
  predicting: null,
  predictTimer: 0,
  runs: 0,
};

function say(message) {
  const box = $("messages");
  box.replaceChildren();
  if (message) {
    const close = element("button", { type: "button", class: "secondary", "aria-label": "Dismiss", text: "×" });
    close.addEventListener("click", () => box.replaceChildren());
    box.append(element("p", { text: message }), close);
  }
}

/** The error a failed call deserves on the page: the server's own message. */
function describe(error) {
  if (error instanceof api.ApiError && error.status === 401) {
    return `${error.message}: enter the server's token under "Access token".`;
  }
  return error.message || String(error);
}

async function loadModels() {
  for (;;) {
    try {
      const answer = await api.listModels();
      state.models = answer.models;
      const select = $("model");
      select.replaceChildren();
      for (const model of answer.models) {
        const note = model.explainable ? "" : " (predict only)";
        select.append(element("option", { value: model.name, text: `${model.name}${note}` }));
      }
      select.value = answer.default_model || answer.models[0]?.name;
      select.disabled = false;
      say("");
      await chooseModel(select.value);
      return;
    } catch (error) {
      // Models still loading (503) are worth waiting for; anything else is for the reader.
      say(describe(error));
      if (!(error instanceof api.ApiError) || error.status !== 503) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

async function chooseModel(name) {
  const model = state.models.find((m) => m.name === name);
  state.model = model;
  state.target = null;
  $("predictions").replaceChildren();
  const info = $("model-info");
  info.replaceChildren();
  const inputs = model.inputs.map((i) => {
    const kind = i.kind.replace("INPUT_KIND_", "").toLowerCase();
    const features = i.features.length ? `: ${i.features.join(", ")}` : "";
    return element("li", { text: `${i.name}: ${kind} [${i.shape.join(", ")}]${features}` });
  });
  info.append(element("ul", {}, ...inputs));
  info.append(
    element("p", {
      class: model.explainable ? "ok" : "warning",
      text: model.explainable ? `Explainable; ${model.labels.length} classes.` : `Not explainable: ${model.not_explainable_reason}`,
    }),
  );
  state.editor = await buildEditor($("input-panel"), model, inputChanged);
  fillBaselines(state.editor.kind);
  inputChanged();
}

function fillBaselines(kind) {
  const select = $("baseline");
  select.replaceChildren();
  const checks = $("compare-baselines");
  checks.replaceChildren();
  BASELINES[kind].forEach(([label], i) => {
    select.append(element("option", { value: String(i), text: label }));
    const id = `compare-baseline-${i}`;
    const box = element("input", { type: "checkbox", id, value: String(i) });
    box.checked = i < 2;
    checks.append(element("div", {}, box, element("label", { for: id, text: label })));
  });
  updateBaselinePreview();
}

/** The `baseline` parameter for option `index` of the current kind (undefined: default). */
function baselineParameter(index) {
  const [, value] = BASELINES[state.editor.kind][index];
  if (value === null) return { blur: { sigma: Number($("blur-sigma").value) || 10 } };
  return value === "" ? undefined : value;
}

function baselineName(index) {
  const [label, value] = BASELINES[state.editor.kind][index];
  return value === null ? `blur σ=${$("blur-sigma").value}` : label;
}

/**
 * Draws the chosen baseline for a photo as the model would see it at 224 × 224 (centre crop):
 * black, white, the photo blurred, or noise. Zeros is the normalised mean colour, which
 * depends on the model's preprocessing: described, not drawn.
 */
function updateBaselinePreview() {
  const figure = $("baseline-figure");
  const kind = state.editor && state.editor.kind;
  const isImage = kind === "image";
  document.querySelectorAll(".blur-only").forEach((e) => (e.hidden = !(isImage && baselineParameter($("baseline").value)?.blur)));
  // Blur IG and XRAI need an image; a hidden choice is not sent.
  document.querySelectorAll("#technique .image-only").forEach((e) => (e.hidden = !isImage));
  if ($("technique").selectedOptions[0]?.hidden) $("technique").value = "";
  document.querySelectorAll(".noise-only").forEach((e) => (e.hidden = !(Number($("noise-samples").value) > 1)));
  const photo = isImage && state.editor.photo();
  figure.hidden = !isImage;
  if (!isImage) return;
  const canvas = $("baseline-preview");
  const context = canvas.getContext("2d");
  const size = canvas.width;
  const value = baselineParameter($("baseline").value);
  const caption = $("baseline-caption");
  caption.textContent = `Baseline: ${baselineName($("baseline").value)}`;
  context.filter = "none";
  if (value === "black" || value === "white") {
    context.fillStyle = value;
    context.fillRect(0, 0, size, size);
  } else if (value === "uniform") {
    const pixels = context.createImageData(size, size);
    for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = i % 4 === 3 ? 255 : Math.random() * 256;
    context.putImageData(pixels, 0, 0);
  } else if (value && value.blur && photo) {
    const image = new Image();
    image.onload = () => {
      const side = Math.min(image.naturalWidth, image.naturalHeight);
      // Sigma is in model pixels (224 across); the preview is `size` across.
      context.filter = `blur(${(value.blur.sigma * size) / 224}px)`;
      context.drawImage(image, (image.naturalWidth - side) / 2, (image.naturalHeight - side) / 2, side, side, 0, 0, size, size);
      context.filter = "none";
    };
    image.src = photo;
  } else {
    context.fillStyle = "#888";
    context.fillRect(0, 0, size, size);
    caption.textContent = value && value.blur ? "Blur: pick a photo to preview it." : "Zeros: each channel at its normalised mean (previewed as grey).";
  }
}

/** The input changed: predict again shortly (typing is not a request per key). */
function inputChanged() {
  const ready = Boolean(state.editor && state.editor.instance());
  const explainable = state.model && state.model.explainable;
  $("explain").disabled = !ready || !explainable || Boolean(state.running);
  $("compare").disabled = $("explain").disabled;
  updateBaselinePreview();
  clearTimeout(state.predictTimer);
  if (ready) state.predictTimer = setTimeout(runPredict, 250);
}

async function runPredict() {
  const instance = state.editor.instance();
  if (!instance) return;
  if (state.predicting) state.predicting.abort();
  const controller = new AbortController();
  state.predicting = controller;
  try {
    const labels = state.model.labels.length;
    const prediction = await api.predict(state.model.name, instance, Math.min(5, labels || 5), controller.signal);
    showPrediction(prediction);
    say("");
  } catch (error) {
    if (error.name !== "AbortError") say(`Predict: ${describe(error)}`);
  } finally {
    if (state.predicting === controller) state.predicting = null;
  }
}

function showPrediction(prediction) {
  const list = $("predictions");
  list.replaceChildren();
  const known = prediction.top.some((p) => p.class_index === state.target);
  if (!known) state.target = null;
  for (const p of prediction.top) {
    const chosen = state.target === null ? p === prediction.top[0] : p.class_index === state.target;
    const button = element(
      "button",
      { type: "button", class: "prediction", "aria-pressed": String(chosen), "data-class": String(p.class_index) },
      element("span", { class: "name", text: p.label || `class ${p.class_index}` }),
      element("span", { class: "probability", text: `${(p.probability * 100).toFixed(1)} %` }),
      element("span", { class: "bar" }),
    );
    button.querySelector(".bar").style.width = `${Math.max(1, p.probability * 100)}%`;
    button.addEventListener("click", () => {
      state.target = p.class_index;
      showPrediction(prediction);
    });
    list.append(element("li", {}, button));
  }
  $("target-hint").textContent =
    state.target === null ? "Explaining the top class; pick another to explain it." : `Explaining class ${state.target}.`;
}

/** Explain's parameters from the options, with `overrides` (a comparison's variations). */
function parameters(overrides = {}) {
  const baselineIndex = overrides.baseline ?? $("baseline").value;
  const p = {};
  const technique = $("technique").selectedOptions[0];
  if (technique && technique.value && !technique.hidden) p.technique = technique.value;
  // Blur IG's path starts at the blurred input and XRAI integrates from black and from white:
  // neither takes a baseline.
  const ownPath = ["blur-ig", "xrai"].includes(p.technique);
  const baseline = baselineParameter(baselineIndex);
  if (baseline !== undefined && !ownPath) p.baseline = baseline;
  p.steps = overrides.steps ?? (Number($("steps").value) || 32);
  const tolerance = Number($("tolerance").value);
  if (tolerance > 0) p.tolerance = tolerance / 100;
  if ($("method").value) p.method = $("method").value;
  const samples = Number($("noise-samples").value) || 0;
  if (samples > 1) p.noise_tunnel = { samples, kind: $("noise-kind").value };
  if ($("objective").value) p.objective = $("objective").value;
  if (state.target !== null) p.target = state.target;
  if (state.editor.kind === "image") p.render = { mask: true };
  const how = [p.technique && !ownPath ? technique.textContent : "", p.noise_tunnel ? `${$("noise-kind").selectedOptions[0].textContent} × ${samples}` : ""]
    .filter(Boolean)
    .map((part) => ` · ${part}`)
    .join("");
  const title = `${ownPath ? technique.textContent : baselineName(baselineIndex)} · ${p.steps} steps${p.method ? ` · ${p.method}` : ""}${how}`;
  return { parameters: p, title };
}

function setRunning(controller) {
  state.running = controller;
  $("cancel").disabled = !controller;
  inputChanged();
}

function showProgress(status, text, fraction) {
  const line = $("run-status");
  line.dataset.state = status;
  line.textContent = text;
  if (fraction !== undefined) $("progress").value = fraction;
}

/** Runs the explanations of `variations` one after another into result cards. */
async function explainAll(variations) {
  const controller = new AbortController();
  setRunning(controller);
  const model = state.model;
  const kind = state.editor.kind;
  const instance = state.editor.instance();
  const photo = state.editor.photo();
  $("run-status").dataset.progressEvents = "0";
  // A comparison's cards stay together, in the order they ran; a single run goes on top.
  let place = (card) => $("results").prepend(card);
  if (variations.length > 1) {
    const cards = element("div", { class: "comparison-cards" });
    const group = element("section", { class: "comparison" }, element("h3", { text: `Comparison: ${variations.length} runs of one input` }), cards);
    $("results").prepend(group);
    place = (card) => cards.append(card);
  }
  try {
    for (const [i, variation] of variations.entries()) {
      const { parameters: p, title } = parameters(variation);
      const label = variations.length > 1 ? `run ${i + 1} of ${variations.length}: ${title}` : title;
      let events = 0;
      showProgress("running", `Starting ${label}…`, 0);
      try {
        const explanation = await api.explain(model.name, instance, p, {
          signal: controller.signal,
          onProgress: (progress) => {
            events += 1;
            const line = $("run-status");
            line.dataset.progressEvents = String(Number(line.dataset.progressEvents) + 1);
            const delta = Number(progress.relative_delta);
            const deltaText = progress.steps > 0 && Number.isFinite(delta) ? `, relative delta ${(delta * 100).toFixed(2)} %` : "";
            showProgress(
              "running",
              `${label}: ${progress.steps_done} of ${progress.steps_total} gradient evaluations${deltaText}, ${Math.round(progress.elapsed_ms)} ms`,
              progress.steps_total ? progress.steps_done / progress.steps_total : 0,
            );
          },
        });
        const card = resultCard(explanation, { kind, photo, title: `${++state.runs}. ${model.name} · ${title}` });
        card.dataset.progressEvents = String(events);
        place(card);
      } catch (error) {
        if (error.name === "AbortError") throw error;
        place(messageCard(`${++state.runs}. ${model.name} · ${title}`, describe(error), "error"));
        showProgress("error", `Failed: ${describe(error)}`);
        return;
      }
    }
    showProgress("done", variations.length > 1 ? `Done: ${variations.length} runs.` : "Done.", 1);
  } catch (error) {
    if (error.name !== "AbortError") throw error;
    showProgress("cancelled", "Cancelled: the server stopped the work.", 0);
  } finally {
    setRunning(null);
  }
}

/** The comparison's variations: each checked baseline at each step count. */
function comparisonVariations() {
  const baselines = [...document.querySelectorAll("#compare-baselines input:checked")].map((b) => b.value);
  const steps = $("compare-steps")
    .value.split(/[\s,]+/)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0);
  const variations = [];
  for (const baseline of baselines.length ? baselines : [$("baseline").value]) {
    for (const count of steps.length ? steps : [undefined]) variations.push({ baseline, steps: count });
  }
  return variations;
}

function wire() {
  $("model").addEventListener("change", (event) => chooseModel(event.target.value).catch((e) => say(describe(e))));
  $("baseline").addEventListener("change", updateBaselinePreview);
  $("blur-sigma").addEventListener("input", updateBaselinePreview);
  $("noise-samples").addEventListener("input", updateBaselinePreview);
  $("explain").addEventListener("click", () => explainAll([{}]));
  $("compare").addEventListener("click", () => explainAll(comparisonVariations()));
  $("cancel").addEventListener("click", () => state.running && state.running.abort());
  $("clear").addEventListener("click", () => $("results").replaceChildren());
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    api.setToken($("token").value.trim());
    loadModels();
  });
  window.addEventListener("unhandledrejection", (event) => say(describe(event.reason)));
}

wire();
loadModels();
