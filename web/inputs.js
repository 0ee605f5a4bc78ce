// The input editors, one per kind of model: a photo (file, drop, or a shipped sample), a text,
// a tabular row edited field by field (the What-If Tool's datapoint editor), or a JSON tensor.
// Each editor makes the KServe V1 instance that the model's inputs call for.

import { exampleRows, listSamples } from "./api.js";

/** The kind of input editor a model (its ModelInfo) needs. */
export function inputKind(model) {
  if (model.text) return "text";
  const inputs = model.inputs || [];
  if (inputs.length === 1 && inputs[0].kind === "INPUT_KIND_IMAGE") return "image";
  if (inputs.length > 0 && inputs.every((i) => i.kind === "INPUT_KIND_FEATURES" && i.features.length)) return "tabular";
  return "tensor";
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export { element };

/**
 * Fills `container` with the editor for `model`; calls `changed()` whenever the input
 * changes. Returns `{kind, instance(), ready(), photo}` where `photo()` is the chosen image's
 * URL (image models) for the overlay and the baseline preview.
 */
export async function buildEditor(container, model, changed) {
  container.replaceChildren();
  const kind = inputKind(model);
  const build = { image: imageEditor, text: textEditor, tabular: tabularEditor, tensor: tensorEditor }[kind];
  const editor = await build(container, model, changed);
  return { kind, ...editor };
}

async function imageEditor(container, model, changed) {
  let photo = null; // { url, b64, name }
  const preview = element("img", { id: "photo-preview", alt: "", hidden: "" });
  const caption = element("p", { id: "photo-caption", class: "hint", text: "No photo yet." });

  async function choose(blob, name) {
    const b64 = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
    if (photo) URL.revokeObjectURL(photo.url);
    photo = { url: URL.createObjectURL(blob), b64, name };
    preview.src = photo.url;
    preview.alt = `the photo to explain: ${name}`;
    preview.hidden = false;
    caption.textContent = name;
    changed();
  }

  const file = element("input", { type: "file", id: "photo-file", accept: "image/*", class: "visually-hidden" });
  file.addEventListener("change", () => file.files[0] && choose(file.files[0], file.files[0].name));
  const drop = element(
    "label",
    { for: "photo-file", class: "drop-zone", id: "drop-zone" },
    element("strong", { text: "Choose a photo" }),
    " or drop one here",
  );
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    const dropped = event.dataTransfer.files[0];
    if (dropped) choose(dropped, dropped.name);
  });

  const samples = element("div", { class: "samples", role: "group", "aria-label": "Sample photos" });
  try {
    for (const sample of (await listSamples()).samples) {
      const button = element(
        "button",
        { type: "button", class: "sample", "data-sample": sample.name, title: `Use ${sample.name}` },
        element("img", { src: sample.url, alt: "" }),
        element("span", { text: sample.name }),
      );
      button.addEventListener("click", async () => {
        const response = await fetch(sample.url);
        await choose(await response.blob(), sample.name);
      });
      samples.append(button);
    }
  } catch (_) {
    samples.append(element("p", { class: "hint", text: "No samples on this server." }));
  }
  container.append(file, drop, element("p", { class: "label", text: "Samples" }), samples, preview, caption);
  return {
    instance: () => photo && { b64: photo.b64 },
    photo: () => photo && photo.url,
    describe: () => (photo ? photo.name : ""),
  };
}

async function textEditor(container, model, changed) {
  const area = element("textarea", { id: "text-input", rows: "4", spellcheck: "true" });
  area.value = "A wonderful, moving film with a brilliant cast.";
  area.addEventListener("input", changed);
  const max = model.text && model.text.max_length ? ` (up to ${model.text.max_length} tokens)` : "";
  container.append(element("label", { for: "text-input", text: `Text${max}` }), area);
  return {
    instance: () => (area.value.trim() ? area.value : null),
    photo: () => null,
    describe: () => area.value.slice(0, 40),
  };
}

async function tabularEditor(container, model, changed) {
  let rows = [];
  try {
    rows = (await exampleRows(model.name)).rows;
  } catch (_) {
    // No examples: the fields start at each feature's lowest id, or 0.
  }
  const fields = new Map();
  const form = element("div", { class: "row-editor" });
  for (const input of model.inputs) {
    const group = element("fieldset", {}, element("legend", { text: input.name }));
    input.features.forEach((feature, i) => {
      const id = `feature-${feature}`;
      const integer = input.dtype === "DATA_TYPE_INT64";
      const field = element("input", { id, type: "number", name: feature, step: integer ? "1" : "any", "data-feature": feature });
      if (input.id_min[i] !== undefined) field.min = input.id_min[i];
      if (input.id_max[i] !== undefined) field.max = input.id_max[i];
      field.value = input.id_min[i] !== undefined ? input.id_min[i] : "0";
      field.addEventListener("input", changed);
      fields.set(feature, field);
      group.append(element("div", { class: "field" }, element("label", { for: id, text: feature }), field));
    });
    form.append(group);
  }
  const fill = (row) => {
    for (const [name, value] of Object.entries(row)) if (fields.has(name)) fields.get(name).value = value;
    changed();
  };
  if (rows.length) {
    const picker = element("select", { id: "example-row" });
    rows.forEach((row, i) => picker.append(element("option", { value: String(i), text: `example row ${i + 1}` })));
    picker.addEventListener("change", () => fill(rows[Number(picker.value)]));
    container.append(element("label", { for: "example-row", text: "Start from" }), picker);
    for (const [name, value] of Object.entries(rows[0])) if (fields.has(name)) fields.get(name).value = value;
  }
  container.append(form);
  return {
    instance: () => {
      const row = {};
      for (const [name, field] of fields) {
        if (field.value === "" || !Number.isFinite(Number(field.value))) return null;
        row[name] = Number(field.value);
      }
      return row;
    },
    photo: () => null,
    describe: () => "row",
    values: () => Object.fromEntries([...fields].map(([name, field]) => [name, field.value])),
  };
}

async function tensorEditor(container, model, changed) {
  const area = element("textarea", { id: "tensor-input", rows: "8", spellcheck: "false", class: "mono" });
  const shapes = model.inputs.map((i) => `${i.name}: [${i.shape.join(", ")}] ${i.dtype.replace("DATA_TYPE_", "").toLowerCase()}`);
  area.placeholder = "[[0.1, 0.2], [0.3, 0.4]]";
  area.addEventListener("input", changed);
  const error = element("p", { class: "hint", id: "tensor-error", role: "status" });
  container.append(
    element("label", { for: "tensor-input", text: "A JSON tensor without the batch dimension (or {input name: tensor})" }),
    element("p", { class: "hint", text: shapes.join("; ") }),
    area,
    error,
  );
  return {
    instance: () => {
      if (!area.value.trim()) return null;
      try {
        error.textContent = "";
        return JSON.parse(area.value);
      } catch (e) {
        error.textContent = `Not JSON: ${e.message}`;
        return null;
      }
    },
    photo: () => null,
    describe: () => "tensor",
  };
}
