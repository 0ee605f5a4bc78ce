// One explanation as a card: the attributions in the form the input calls for (the mask over
// the photo, coloured words, sorted feature bars), the numbers that say whether to trust it
// (F(x), F(x'), their difference against the sum of attributions), and the saturation plots.

import { barChart, formatNumber, lineChart } from "./charts.js";
import { element } from "./inputs.js";

/** Red for a positive attribution, blue for a negative one; `strength` in [0, 1]. */
export function attributionColour(value, strength) {
  const alpha = Math.min(1, Math.max(0, strength)) * 0.85;
  return value >= 0 ? `rgba(214, 39, 40, ${alpha})` : `rgba(31, 119, 180, ${alpha})`;
}

/**
 * The card for `explanation` of a `kind` input; `photo` is the photo's URL (images); `title`
 * names the run (its baseline and steps, for comparisons).
 */
export function resultCard(explanation, { kind, photo, title }) {
  const card = element("article", { class: "result", "data-state": "done" });
  const heading = element("h3", { text: title });
  card.append(heading);
  card.append(element("p", { class: "target", text: `Explaining class ${explanation.target_class} "${explanation.label}"` }));
  card.querySelector(".target").dataset.label = explanation.label;
  const view = { image: imageView, text: textView, tabular: tabularView, tensor: tensorView }[kind];
  card.append(view(explanation, photo));
  card.append(numbers(explanation));
  const plots = element("div", { class: "plots" });
  plots.append(
    lineChart(explanation.path, { x: "alpha", y: "score", xLabel: "alpha", yLabel: "score", title: "Target score along the path" }),
    lineChart(explanation.path, { x: "alpha", y: "mean_abs_gradient", xLabel: "alpha", yLabel: "mean |gradient|", title: "Mean |gradient| along the path" }),
  );
  card.append(plots);
  card.append(downloadButton(explanation, title));
  return card;
}

/** A card that says a run failed or was cancelled (never a blank panel). */
export function messageCard(title, message, state) {
  const card = element("article", { class: `result ${state}`, "data-state": state });
  card.append(element("h3", { text: title }), element("p", { class: "message", role: "alert", text: message }));
  return card;
}

/** The photo with the attribution mask over it (opacity on a slider), and the mask alone. */
function imageView(explanation, photo) {
  const view = element("div", { class: "image-view" });
  const mask = `data:image/png;base64,${explanation.mask_png}`;
  const stack = element(
    "figure",
    { class: "overlay" },
    element("div", { class: "stack" }, element("img", { src: photo, alt: "the photo" }), element("img", { src: mask, alt: "attribution mask over the photo", class: "mask-layer" })),
  );
  const slider = element("input", { type: "range", min: "0", max: "1", step: "0.05", value: "0.6" });
  const layer = stack.querySelector(".mask-layer");
  const setOpacity = () => (layer.style.opacity = slider.value);
  slider.addEventListener("input", setOpacity);
  setOpacity();
  const label = element("label", { class: "slider" }, "Mask opacity ", slider);
  stack.append(element("figcaption", {}, label));
  const alone = element(
    "figure",
    { class: "mask" },
    element("img", { src: mask, alt: "attribution mask: sum of |IG| over channels" }),
    element("figcaption", { text: "Mask: sum over channels of |attribution|" }),
  );
  view.append(stack, alone);
  return view;
}

/** Words (or tokens) coloured by attribution; hovering or focusing one shows its value. */
function textView(explanation) {
  const view = element("div", { class: "text-view" });
  const show = element("div", { class: "toggle", role: "group", "aria-label": "Show" });
  const words = element("button", { type: "button", "aria-pressed": "true", text: "Words" });
  const tokens = element("button", { type: "button", "aria-pressed": "false", text: "Tokens" });
  show.append(words, tokens);
  const body = element("p", { class: "tokens" });
  const readout = element("p", { class: "hint token-readout", "aria-live": "polite", text: "Hover or focus a word for its attribution." });
  const draw = (useTokens) => {
    const items = useTokens
      ? explanation.tokens.map((t) => ({ text: t.token, value: t.attribution, special: t.special }))
      : explanation.words.map((w) => ({ text: w.word, value: w.attribution, special: false }));
    const largest = Math.max(...items.map((i) => Math.abs(i.value)), 1e-12);
    body.replaceChildren();
    for (const item of items) {
      const span = element("span", {
        class: item.special ? "token special" : "token",
        tabindex: "0",
        title: `${item.text}: ${formatNumber(item.value)}`,
        "data-attribution": String(item.value),
        text: item.text,
      });
      span.style.backgroundColor = attributionColour(item.value, Math.abs(item.value) / largest);
      const tell = () => (readout.textContent = `${item.text}: ${formatNumber(item.value)}`);
      span.addEventListener("pointerenter", tell);
      span.addEventListener("focus", tell);
      body.append(span, " ");
    }
    words.setAttribute("aria-pressed", String(!useTokens));
    tokens.setAttribute("aria-pressed", String(useTokens));
  };
  words.addEventListener("click", () => draw(false));
  tokens.addEventListener("click", () => draw(true));
  draw(false);
  view.append(show, body, readout, legend());
  return view;
}

function legend() {
  return element(
    "p",
    { class: "legend hint" },
    element("span", { class: "swatch positive" }),
    " raises the target ",
    element("span", { class: "swatch negative" }),
    " lowers it",
  );
}

/** The features as bars sorted by |attribution|, each with its value. */
function tabularView(explanation) {
  const items = explanation.features.map((f) => ({ name: f.name, value: f.attribution, detail: formatNumber(f.value) }));
  const view = element("div", { class: "tabular-view" });
  view.append(barChart(items, { title: "Feature attributions" }), legend());
  return view;
}

/** A tensor input's largest attributions by position. */
function tensorView(explanation) {
  const view = element("div", { class: "tensor-view" });
  for (const [name, tensor] of Object.entries(explanation.tensor_attributions)) {
    const values = tensor.values || [];
    const top = values
      .map((value, index) => ({ name: `${name}[${index}]`, value }))
      .sort((a, b) => Math.abs(b.value) - Math.abs(a.value))
      .slice(0, 12);
    view.append(barChart(top, { title: `${name} ${JSON.stringify(tensor.shape)}: the 12 largest |attributions|` }));
  }
  return view;
}

/** The completeness check: F(x) - F(x') against the sum, and what it cost. */
function numbers(explanation) {
  const relative = explanation.relative_delta;
  const rows = [
    ["F(x)", formatNumber(explanation.score_input), "score_input"],
    ["F(x')", formatNumber(explanation.score_baseline), "score_baseline"],
    ["F(x) − F(x')", formatNumber(explanation.score_input - explanation.score_baseline), "difference"],
    ["Sum of attributions", formatNumber(explanation.attribution_sum), "attribution_sum"],
    ["Delta", `${formatNumber(explanation.convergence_delta)}${Number.isFinite(relative) ? ` (${(relative * 100).toFixed(2)} %)` : ""}`, "convergence_delta"],
    ["Converged", explanation.converged ? `yes (within ${(explanation.convergence_tolerance * 100).toFixed(1)} %)` : "no", "converged"],
    ["Steps", `${explanation.steps} (${explanation.method.replace("METHOD_", "").toLowerCase()})`, "steps"],
    ["Time", `${Math.round(explanation.elapsed_ms)} ms`, "elapsed_ms"],
  ];
  // What ran, as the server says (not as the form asked).
  const technique = (explanation.technique || "").replace("TECHNIQUE_", "");
  if (technique && technique !== "UNSPECIFIED") rows.unshift(["Technique", technique.toLowerCase().replaceAll("_", " "), "technique"]);
  if (explanation.noise_samples > 1) rows.unshift(["Noise samples", String(explanation.noise_samples), "noise_samples"]);
  const table = element("dl", { class: "numbers" });
  for (const [name, value, key] of rows) {
    table.append(element("dt", { text: name }), element("dd", { text: value, "data-key": key }));
  }
  return table;
}

function downloadButton(explanation, title) {
  const button = element("button", { type: "button", class: "secondary", text: "Download JSON" });
  button.addEventListener("click", () => {
    const blob = new Blob([JSON.stringify(explanation, null, 1)], { type: "application/json" });
    const link = element("a", { href: URL.createObjectURL(blob), download: `explanation-${title.replace(/[^\w.-]+/g, "_")}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  });
  return button;
}
