#!/usr/bin/env python3
"""Make small BERT text-classifier ONNX graphs for the gradient-graph builder's tests
(tests/data/autodiff/bert/).

integrad differentiates ONNX graphs op by op with respect to an inner tensor: for text
models, the word-embedding Gather output. The hand-made graphs of make_autodiff_fixtures.py
do not carry what a real Hugging Face export carries between that tensor and `logits`:
the pooler's `hidden_states[:, 0]` (a Gather on the dynamic sequence axis), Reshapes whose
shapes are computed from Shape/Concat, the attention-mask subgraph (Range, ConstantOfShape,
Expand, Where, And, ...) that meets the differentiable path in an Add, and, after
onnxruntime's transformer optimizer, com.microsoft fused ops. These graphs are exported the
way people export them, from a tiny randomly initialised model, so they stay small.

Model: transformers.BertForSequenceClassification from
    BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=64, num_labels=3,
               hidden_dropout_prob=0, attention_probs_dropout_prob=0,
               initializer_range=0.2, attn_implementation="eager")
with torch.manual_seed(0) before construction, eval mode, the standard pooler
(hidden_states[:, 0] -> dense -> tanh -> classifier). initializer_range is 0.2 instead of
BERT's 0.02: with 0.02 a fresh model's logits are ~1e-2 and nearly the same for every input
(the same argmax for every row, gradients ~1e-4), which would make the agreement numbers and
reference gradients meaningless; 0.2 gives logits of order 1 and attention that is neither
uniform nor one-hot. Nothing comes from a model hub (HF_HUB_OFFLINE=1).

Writes into tests/data/autodiff/bert/:
  bert_cls_script.onnx     torch.onnx.export(dynamo=False, opset_version=17), inputs
      input_ids / attention_mask / token_type_ids (int64 [batch, sequence], both axes
      dynamic), output logits [batch, 3], constant folding on, weights inline
  bert_cls_dynamo.onnx     the same model from torch.onnx.export(dynamo=True) with
      torch.export.Dim batch/sequence, optimize=True, external_data=False, opset 17
      requested (opset 18 if 17 fails; the exporter builds 18 and down-converts)
  bert_cls_optimized.onnx  onnxruntime.transformers.optimizer.optimize_model(
      bert_cls_script.onnx, model_type="bert", num_heads=4, hidden_size=32) saved:
      EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu (com.microsoft)
  inputs.json   3 rows (lengths 7, 7 with 2 trailing pad tokens, 12 with two segments), the
      torch logits, and per graph the onnxruntime (CPU) logits and max |ORT - torch|, one
      row at a time and as one batch padded to 12
  graphs.json   per graph: the word-embedding Gather output's name (the Gather whose indices
      are the graph input input_ids and whose data is an initializer; none in the optimized
      graph, where EmbedLayerNormalization swallows it: its output 0 is the path start
      there), op inventory (domain, op type, count), and the nodes on the differentiable
      path from that tensor to logits with notes on their non-differentiable inputs
      (constant or computed from Shape/graph inputs) and attributes; plus the objective and
      targets of the reference gradients
  grad_<row>.npy  float32 [sequence, 32]: d logits[0, target] / d (word-embedding output)
      for row <row> alone (batch of 1), target = argmax of that row's logits; torch
      autograd in float64 on the same weights, through a forward hook on
      model.bert.embeddings.word_embeddings (cross-checked against
      model(inputs_embeds=...), which adds position and token-type embeddings the same way)
  README.md     what each file is, versions, op inventories, path ops, agreement numbers

The differentiable path: tensors reachable from the start tensor through float-typed
outputs (a Shape of a path tensor is int64 and stops the walk), intersected with the
tensors that reach logits through float-typed inputs; element types come from onnxruntime's
symbolic shape inference (which knows the com.microsoft ops). A path node's other inputs
are classified as initializer / Constant / constant-foldable, shape-derived (computed at
run time from Shape nodes only) or input-derived (from graph input values such as the
attention mask, maybe shapes too).

Checks the script fails on: ORT vs torch logits (max |diff| < 1e-4 for the two plain
exports, < 1e-3 for the optimized graph), the word-embedding tensor's ORT value vs torch's,
inputs_embeds vs hook gradients, onnx.checker on the plain exports, file sizes < 1 MB.
Deterministic: the same files byte for byte on a rerun (torch.manual_seed(0), fixed ids,
one thread).

Run from the repository root with the dev virtualenv (scripts/requirements-dev.txt):
    .venv-dev/bin/python scripts/make_bert_graphs.py
"""

import json
import os
import platform
import re
import sys
from collections import Counter, OrderedDict

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
import transformers
from onnx import numpy_helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from onnxruntime.transformers.optimizer import optimize_model
from transformers import BertConfig, BertForSequenceClassification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "autodiff", "bert")
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
HIDDEN = 32
HEADS = 4
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
# Ops whose non-differentiable inputs or attributes depend on shapes: worth a note.
SHAPE_OPS = {"Gather", "GatherND", "GatherElements", "Slice", "Expand", "Where", "Range",
             "ConstantOfShape", "Reshape", "Squeeze", "Unsqueeze", "Tile", "Pad", "Split",
             "Concat", "Flatten", "Transpose", "Shape", "Size"}

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------- model and inputs

def make_model():
    cfg = BertConfig(vocab_size=120, hidden_size=HIDDEN, num_hidden_layers=2,
                     num_attention_heads=HEADS, intermediate_size=64,
                     max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, initializer_range=0.2,
                     attn_implementation="eager")
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    return model


class Logits(torch.nn.Module):
    """Positional (input_ids, attention_mask, token_type_ids) -> logits, for the exporters."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.m(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).logits


def make_rows():
    """Three rows: ids in [4, 119] framed by 2 ... 3 (a [CLS]/[SEP]-like convention)."""
    rng = np.random.default_rng(0)
    body = lambda n: [int(v) for v in rng.integers(4, 120, size=n)]
    r0 = [2] + body(5) + [3]                                   # length 7, no padding
    r1 = [2] + body(3) + [3] + [0, 0]                          # length 7, 2 trailing pads
    r2 = [2] + body(4) + [3] + body(5) + [3]                   # length 12, two segments
    return [
        {"input_ids": r0, "attention_mask": [1] * 7, "token_type_ids": [0] * 7},
        {"input_ids": r1, "attention_mask": [1] * 5 + [0] * 2, "token_type_ids": [0] * 7},
        {"input_ids": r2, "attention_mask": [1] * 12, "token_type_ids": [0] * 6 + [1] * 6},
    ]


def feeds(row):
    return {k: np.array([row[k]], dtype=np.int64) for k in INPUT_NAMES}


def padded_batch(rows):
    n = max(len(r["input_ids"]) for r in rows)
    return {k: np.array([r[k] + [0] * (n - len(r[k])) for r in rows], dtype=np.int64)
            for k in INPUT_NAMES}


def torch_logits(model, f):
    with torch.no_grad():
        return Logits(model)(*(torch.from_numpy(f[k]) for k in INPUT_NAMES)).numpy()


# ---------------------------------------------------------------- exports

def export_script(model, rows, path):
    f = feeds(rows[1])  # a padded example row, so nothing specialises on an all-ones mask
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUT_NAMES}
    axes["logits"] = {0: "batch"}
    torch.onnx.export(
        Logits(model), tuple(torch.from_numpy(f[k]) for k in INPUT_NAMES), path,
        dynamo=False, export_params=True, opset_version=17, do_constant_folding=True,
        input_names=INPUT_NAMES, output_names=["logits"], dynamic_axes=axes)
    onnx.checker.check_model(path, full_check=True)
    return {"exporter": "torch.onnx.export(dynamo=False) (TorchScript)", "opset_requested": 17}


def export_dynamo(model, rows, path):
    f = padded_batch(rows[:2])  # batch 2, sequence 7: neither dim is 0/1-specialised
    args = tuple(torch.from_numpy(f[k]) for k in INPUT_NAMES)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=2, max=64)
    notes = []
    for opset in (17, 18):
        try:
            prog = torch.onnx.export(
                Logits(model), args, dynamo=True, opset_version=opset,
                input_names=INPUT_NAMES, output_names=["logits"],
                dynamic_shapes={k: {0: batch, 1: seq} for k in INPUT_NAMES},
                optimize=True, external_data=False)
            prog.save(path)
            onnx.checker.check_model(path, full_check=True)
            got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
                None, feeds(rows[2]))[0]
            want = torch_logits(model, feeds(rows[2]))
            assert np.max(np.abs(got - want)) < 1e-4
            break
        except Exception as e:  # noqa: BLE001 - record and try the next opset
            notes.append(f"opset {opset} failed: {type(e).__name__}: {str(e)[:300]}")
            print(notes[-1])
            if os.path.exists(path):
                os.remove(path)
    else:
        return {"exporter": "torch.onnx.export(dynamo=True)", "failed": notes}
    got_opset = {o.domain: o.version for o in onnx.load(path).opset_import}.get("", None)
    if opset == 17 and got_opset == 17:
        notes.append("the exporter builds opset 18 (its lowest) and down-converts to the "
                     "requested 17 with the onnx C API version converter")
    return {"exporter": "torch.onnx.export(dynamo=True, optimize=True), onnxscript "
                        + onnxscript.__version__,
            "opset_requested": opset, "notes": notes}


def export_optimized(src, path):
    opt = optimize_model(src, model_type="bert", num_heads=HEADS, hidden_size=HIDDEN)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(path)
    return {"exporter": "onnxruntime.transformers.optimizer.optimize_model(bert_cls_script.onnx,"
                        " model_type='bert', num_heads=4, hidden_size=32), onnxruntime "
                        + ort.__version__,
            "fused_operator_statistics": stats}


# ---------------------------------------------------------------- graph analysis

def op_key(node):
    return f"{node.domain}::{node.op_type}" if node.domain else node.op_type


def inventory(nodes):
    c = Counter((n.domain or "ai.onnx", n.op_type) for n in nodes)
    return [{"domain": d, "op_type": t, "count": k} for (d, t), k in sorted(c.items())]


def short_value(arr):
    if arr.size <= 8:
        return f"{arr.dtype}{list(arr.shape)} = {arr.reshape(-1).tolist()}"
    return f"{arr.dtype}{list(arr.shape)}"


class Graph:
    def __init__(self, model):
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        self.vi = {}
        for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(
                inferred.graph.output):
            self.vi[v.name] = v
        self.consts = {}
        for name, t in self.inits.items():
            self.consts[name] = numpy_helper.to_array(t)
        for n in self.nodes:
            if n.op_type == "Constant" and not n.domain:
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)

    def elem_type(self, name):
        if name in self.inits:
            return self.inits[name].data_type
        v = self.vi.get(name)
        return v.type.tensor_type.elem_type if v is not None else None

    def is_float(self, name):
        return self.elem_type(name) in FLOAT_TYPES

    def dims(self, name):
        if name in self.inits:
            return list(self.inits[name].dims)
        v = self.vi.get(name)
        if v is None or not v.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_param if d.HasField("dim_param") else
                (d.dim_value if d.HasField("dim_value") else "?")
                for d in v.type.tensor_type.shape.dim]

    def word_embedding(self):
        hits = [n for n in self.nodes if n.op_type == "Gather" and not n.domain
                and len(n.input) == 2 and n.input[1] == "input_ids" and n.input[0] in self.inits]
        assert len(hits) <= 1, [n.name for n in hits]
        return hits[0] if hits else None

    def ancestors(self, name):
        """Producer nodes of `name` and of what it depends on, in graph order. The walk does
        not go through a Shape node's input: only that tensor's shape matters there."""
        seen, order, stack = set(), [], [name]
        while stack:
            t = stack.pop()
            n = self.producer.get(t)
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            order.append(n)
            if n.op_type != "Shape":
                stack.extend(i for i in n.input if i)
        pos = {id(n): k for k, n in enumerate(self.nodes)}
        return sorted(order, key=lambda n: pos[id(n)])

    def describe_input(self, name):
        """initializer / Constant / constant-foldable (fixed for every input), shape-derived
        (computed at run time from Shape of some tensors only) or input-derived (from the
        values of graph inputs, e.g. the attention mask or token-type ids, maybe shapes too)."""
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.elem_type(name)).name \
            if self.elem_type(name) else "?"
        if name in self.inits:
            return {"kind": "initializer", "name": name, "value": short_value(self.consts[name])}
        if name in self.consts:
            return {"kind": "Constant", "name": name, "value": short_value(self.consts[name])}
        if name in self.inputs:
            return {"kind": "graph input", "name": name, "dtype": dtype}
        anc = self.ancestors(name)
        values_of = sorted({i for n in anc if n.op_type != "Shape" for i in n.input
                            if i in self.inputs})
        shape_of = sorted({n.input[0] for n in anc if n.op_type == "Shape"})
        chain = list(OrderedDict.fromkeys(op_key(n) for n in anc))
        d = {"kind": "input-derived" if values_of else
             ("shape-derived" if shape_of else "constant-foldable"),
             "name": name, "dtype": dtype, "producer_ops": chain}
        if values_of:
            d["values_of"] = values_of
        if shape_of:
            d["shape_of"] = shape_of
        return d

    def path(self, start, end="logits"):
        fwd = {start}
        for n in self.nodes:  # nodes are topologically sorted in all three graphs
            if any(i in fwd for i in n.input):
                fwd.update(o for o in n.output if o and self.is_float(o))
        bwd = {end}
        for n in reversed(self.nodes):
            if any(o in bwd for o in n.output):
                bwd.update(i for i in n.input if i and self.is_float(i))
        on = [n for n in self.nodes
              if any(i in fwd and i in bwd for i in n.input) and any(o in bwd for o in n.output)]
        return on, fwd

    def note(self, n, fwd):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()
                 if not isinstance(v, (onnx.TensorProto, onnx.GraphProto))}
        d = {"name": n.name, "op_type": n.op_type, "domain": n.domain or "ai.onnx"}
        if attrs:
            d["attributes"] = attrs
        d["path_inputs"] = [i for i in n.input if i in fwd]
        other = [(k, i) for k, i in enumerate(n.input) if i and i not in fwd]
        if other:
            d["other_inputs"] = {str(k): self.describe_input(i) for k, i in other}
        d["output_shape"] = self.dims(n.output[0])
        d["shape_dependent"] = any(v["kind"] == "shape-derived" or v.get("shape_of")
                                   for v in d.get("other_inputs", {}).values())
        if n.op_type in ("Gather", "GatherElements") and not n.domain:
            axis = attrs.get("axis", 0)
            data_dims = self.dims(n.input[0])
            if data_dims is not None:
                rank = len(data_dims)
                dim = data_dims[axis % rank]
                d["gather_axis_dim"] = dim
                d["gather_on_dynamic_axis"] = isinstance(dim, str)
        return d

    def summary_line(self, d):
        bits = []
        if "attributes" in d:
            bits.append(", ".join(f"{k}={v}" for k, v in d["attributes"].items()))
        for k, v in d.get("other_inputs", {}).items():
            if v["kind"] in ("initializer", "Constant"):
                bits.append(f"in{k} {v['kind']} {v['value']}")
            elif v["kind"] == "graph input":
                bits.append(f"in{k} graph input {v['name']}")
            else:
                src = []
                if v.get("values_of"):
                    src.append("values of " + ", ".join(v["values_of"]))
                if v.get("shape_of"):
                    src.append("Shape(" + ", ".join(v["shape_of"]) + ")")
                bits.append(f"in{k} {v['kind']} {v['dtype']}"
                            + (f" from {' and '.join(src)}" if src else "")
                            + f" via {' -> '.join(v['producer_ops'])}")
        if "gather_on_dynamic_axis" in d:
            bits.append(f"gathers along axis of size {d['gather_axis_dim']}"
                        + (" (dynamic)" if d["gather_on_dynamic_axis"] else ""))
        return "; ".join(bits)


def analyse(path):
    model = onnx.load(path)
    g = Graph(model)
    info = {
        "file": os.path.basename(path),
        "bytes": os.path.getsize(path),
        "opset_import": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": {i: g.dims(i) for i in g.inputs},
        "outputs": {o.name: g.dims(o.name) for o in model.graph.output},
        "node_count": len(g.nodes),
        "ops": inventory(g.nodes),
    }
    we = g.word_embedding()
    if we is not None:
        start = we.output[0]
        info["word_embedding_tensor"] = start
        info["word_embedding_gather"] = {"node": we.name, "table": we.input[0],
                                         "table_shape": list(g.inits[we.input[0]].dims)}
        info["path_start"] = start
    else:
        eln = [n for n in g.nodes if n.op_type == "EmbedLayerNormalization"]
        assert len(eln) == 1, "no word-embedding Gather and no EmbedLayerNormalization"
        start = eln[0].output[0]
        info["word_embedding_tensor"] = None
        info["word_embedding_note"] = (
            "no word-embedding Gather: com.microsoft EmbedLayerNormalization "
            f"({eln[0].name}) takes input_ids and the word/position/segment tables itself "
            "and outputs LayerNorm(word + position + segment embeddings); its output 0 is "
            "the path start here (the earliest tensor on the path that exists)")
        info["path_start"] = start
        info["embed_layer_norm"] = {
            "node": eln[0].name, "outputs": list(eln[0].output),
            "inputs": {str(k): g.describe_input(i) for k, i in enumerate(eln[0].input) if i}}
    nodes, fwd = g.path(start)
    notes = [g.note(n, fwd) for n in nodes]
    for d in notes:
        d["summary"] = g.summary_line(d)
    info["path_ops"] = inventory(nodes)
    info["path_nodes"] = notes
    off = [n for n in g.nodes if n not in nodes and n.op_type in
           ("Gather", "GatherND", "Slice", "Expand", "Where", "Range", "ConstantOfShape")]
    info["shape_ops_off_path"] = [
        {"name": n.name, "op_type": n.op_type,
         "inputs": {str(k): g.describe_input(i)["kind"] for k, i in enumerate(n.input) if i}}
        for n in off]
    return info, g


# ---------------------------------------------------------------- gradients

def reference_grads(model, rows):
    """d logits[0, target] / d word-embedding output, per row, float64 torch autograd."""
    m = make_model().double().eval()
    m.load_state_dict(model.state_dict())
    m = m.double()
    out, targets, checks = [], [], []
    for row in rows:
        f = {k: torch.from_numpy(v) for k, v in feeds(row).items()}
        store = {}

        def hook(_mod, _inp, y):
            y.retain_grad()
            store["emb"] = y

        h = m.bert.embeddings.word_embeddings.register_forward_hook(hook)
        logits = m(**f).logits
        h.remove()
        t = int(torch.argmax(logits[0]))
        logits[0, t].backward()
        g = store["emb"].grad[0].detach().numpy()
        # Cross-check: inputs_embeds = the word-embedding output, same position/type adds.
        emb = m.bert.embeddings.word_embeddings(f["input_ids"]).detach().requires_grad_(True)
        l2 = m(inputs_embeds=emb, attention_mask=f["attention_mask"],
               token_type_ids=f["token_type_ids"]).logits
        l2[0, t].backward()
        d = float(np.max(np.abs(emb.grad[0].numpy() - g)))
        assert d < 1e-12, d
        targets.append(t)
        out.append(g)
        checks.append(d)
    return out, targets, checks


def check_word_embedding(path, name, model, rows):
    """The tensor `name` in the ONNX graph equals torch's word-embedding lookup."""
    m = onnx.load(path)
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for row in rows:
        got = s.run([name], feeds(row))[0]
        with torch.no_grad():
            want = model.bert.embeddings.word_embeddings(
                torch.tensor([row["input_ids"]])).numpy()
        worst = max(worst, float(np.max(np.abs(got - want))))
    assert worst == 0.0, worst
    return worst


# ---------------------------------------------------------------- output

def write_json(path, obj):
    """json with indent 1, but lists of plain numbers/strings kept on one line."""
    text = json.dumps(obj, indent=1)
    text = re.sub(r"\[\s*((?:-?[\w.+\-\"]+,\s*)*-?[\w.+\-\"]+)\s*\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    assert json.loads(text) == obj
    with open(path, "w") as f:
        f.write(text + "\n")


# ---------------------------------------------------------------- README

def fmt_ops(ops):
    return ", ".join(f"{o['op_type']}" + (f" ({o['domain']})" if o["domain"] != "ai.onnx" else "")
                     + f" x{o['count']}" for o in ops)


def write_readme(graphs, inputs, grads_meta, versions, cmd):
    L = []
    L.append("# Hugging Face BERT classifier graphs for the gradient-graph builder\n")
    L.append("Made by `scripts/make_bert_graphs.py` (see its docstring) with the dev virtualenv "
             f"(`scripts/requirements-dev.txt`: {versions}):\n")
    L.append(f"    {cmd}\n")
    L.append("Model: `transformers.BertForSequenceClassification` from a tiny `BertConfig` "
             "(vocab_size 120, hidden_size 32, 2 layers, 4 heads, intermediate_size 64, "
             "max_position_embeddings 64, num_labels 3, dropout 0, initializer_range 0.2, "
             "attn_implementation \"eager\"), `torch.manual_seed(0)`, eval mode, standard pooler "
             "(`hidden_states[:, 0]` -> dense -> tanh -> classifier). initializer_range is 0.2, "
             "not 0.02, so that the random logits are of order 1 and differ between rows. "
             "All weights are inline in each `.onnx` (no external data). The run is "
             "deterministic (same bytes on a rerun).\n")
    L.append("| file | what |")
    L.append("| --- | --- |")
    for name, g in graphs.items():
        if "bytes" not in g:
            L.append(f"| `{name}` | not made: {'; '.join(g.get('failed', []))} |")
            continue
        op = g["opset_import"].get("ai.onnx")
        L.append(f"| `{name}` | {g['exporter']}; opset {op}; {g['node_count']} nodes; "
                 f"{g['bytes']} bytes; inputs {', '.join(f'{k} {v}' for k, v in g['inputs'].items())}; "
                 f"output logits {g['outputs']['logits']} |")
    L.append("| `inputs.json` | the 3 example rows (`input_ids`, `attention_mask`, "
             "`token_type_ids`, int64, each run as a batch of 1), torch's float32 logits, and per "
             "graph onnxruntime's CPU logits with max abs difference, row by row and as one batch "
             "of 3 right-padded to 12 |")
    L.append("| `graphs.json` | per graph: word-embedding tensor, op inventory, the nodes on the "
             "differentiable path with notes; objective and targets of the gradients |")
    for k, (shape, t) in enumerate(zip(grads_meta["shapes"], grads_meta["targets"])):
        L.append(f"| `grad_{k}.npy` | float32 {shape}: d logits[0, {t}] / d word-embedding "
                 f"output for row {k} (target = argmax) |")
    L.append("")
    L.append("## Inputs\n")
    L.append("Ids are in [4, 119] between a leading 2 and a trailing 3 (a [CLS]/[SEP]-like "
             "convention; the model is untrained); padding id 0 (pad_token_id).\n")
    L.append("| row | length | input_ids | attention_mask | token_type_ids | torch logits | target |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for k, r in enumerate(inputs["rows"]):
        lg = ", ".join(f"{v:.5f}" for v in inputs["torch_logits"][k])
        L.append(f"| {k} | {len(r['input_ids'])} | {r['input_ids']} | {r['attention_mask']} | "
                 f"{r['token_type_ids']} | [{lg}] | {grads_meta['targets'][k]} |")
    L.append("")
    L.append("## Agreement (max abs difference of logits, onnxruntime CPU vs torch float32)\n")
    L.append("| graph | row 0 | row 1 | row 2 | batch of 3 padded to 12 |")
    L.append("| --- | --- | --- | --- | --- |")
    for name, r in inputs["graphs"].items():
        per = " | ".join(f"{v:.2e}" for v in r["max_abs_diff_per_row"])
        L.append(f"| `{name}` | {per} | {r['batch_max_abs_diff']:.2e} |")
    L.append("")
    L.append("Reference gradients: torch autograd in float64 on the same weights (stored as "
             "float32), through a forward hook on `model.bert.embeddings.word_embeddings`; "
             "`model(inputs_embeds=...)` gives the same gradient (max |diff| "
             f"{max(grads_meta['inputs_embeds_check']):.1e}). The padded row's gradient at "
             "its two pad positions is "
             f"{grads_meta['pad_grad_max']:.1e} (masked keys get exactly zero attention). "
             "Per-row gradient norms: "
             + ", ".join(f"{v:.4f}" for v in grads_meta["norms"]) + ".\n")
    L.append("## Summary: what lies on the differentiable path\n")
    watch = ("Gather", "GatherND", "Slice", "Expand", "Where", "Range", "ConstantOfShape",
             "Tile", "Pad")
    for name, g in graphs.items():
        if "bytes" not in g:
            continue
        ops = {o["op_type"] for o in g["path_ops"]}
        absent = [o for o in watch if o not in ops]
        shaped = Counter(d["op_type"] for d in g["path_nodes"] if d["shape_dependent"])
        dyn = [d["name"] for d in g["path_nodes"] if d.get("gather_on_dynamic_axis")]
        ms = [f"{o['op_type']} x{o['count']}" for o in g["path_ops"]
              if o["domain"] != "ai.onnx"]
        L.append(f"- `{name}` (from `{g['path_start']}`): "
                 + (f"Gather on the dynamic sequence axis with a constant index: "
                    f"{', '.join(f'`{x}`' for x in dyn)}; " if dyn else "")
                 + ("ops whose non-path inputs are computed at run time from shapes "
                    "(Reshape: the target shape; Add: the position-embedding and "
                    "attention-mask-bias operands): "
                    + ", ".join(f"{k} x{v}" for k, v in sorted(shaped.items())) + "; "
                    if shaped else "")
                 + (f"com.microsoft ops: {', '.join(ms)}; " if ms else "")
                 + f"not on the path: {', '.join(absent)}.")
    L.append("")
    for name, g in graphs.items():
        if "bytes" not in g:
            continue
        L.append(f"## `{name}`\n")
        L.append(f"Exporter: {g['exporter']}.")
        for n in g.get("notes", []):
            L.append(f"Note: {n}.")
        if g.get("fused_operator_statistics"):
            L.append("Fused: " + ", ".join(f"{k} x{v}" for k, v in
                                          g["fused_operator_statistics"].items()) + ".")
        L.append("")
        if g["word_embedding_tensor"]:
            L.append(f"Word-embedding tensor: `{g['word_embedding_tensor']}` (output of Gather "
                     f"`{g['word_embedding_gather']['node']}` on table "
                     f"`{g['word_embedding_gather']['table']}` "
                     f"{g['word_embedding_gather']['table_shape']} with indices `input_ids`; "
                     "its onnxruntime value equals torch's lookup exactly).\n")
        else:
            L.append(f"Word-embedding tensor: none. {g['word_embedding_note'][0].upper()}"
                     f"{g['word_embedding_note'][1:]} (`{g['path_start']}`). Its inputs: "
                     + "; ".join(f"in{k} {v['kind']} `{v['name']}`"
                                 + (f" {v['value']}" if "value" in v else "")
                                 for k, v in g["embed_layer_norm"]["inputs"].items())
                     + f"; outputs {g['embed_layer_norm']['outputs']} (output 1 is the int32 "
                     "mask index that the Attention nodes take).\n")
        L.append(f"All ops ({g['node_count']} nodes): {fmt_ops(g['ops'])}.\n")
        L.append(f"Ops on the differentiable path from `{g['path_start']}` to `logits` "
                 f"({sum(o['count'] for o in g['path_ops'])} nodes): {fmt_ops(g['path_ops'])}.\n")
        L.append("Path nodes with non-differentiable inputs or shape-dependent behaviour "
                 "(in<k> = input k; shape-derived = computed at run time from Shape only; "
                 "input-derived = from graph input values, maybe shapes too; `via` lists the "
                 "distinct op types of the producers in graph order, not through a Shape's "
                 "input):\n")
        L.append("| node | op | notes |")
        L.append("| --- | --- | --- |")
        for d in g["path_nodes"]:
            varying = any(v["kind"] not in ("initializer", "Constant")
                          for v in d.get("other_inputs", {}).values())
            if d["op_type"] in SHAPE_OPS or varying or d["domain"] != "ai.onnx":
                op = d["op_type"] + (f" ({d['domain']})" if d["domain"] != "ai.onnx" else "")
                L.append(f"| `{d['name']}` | {op} | {d['summary'].replace('|', '/')} |")
        L.append("")
        if g["shape_ops_off_path"]:
            c = Counter(o["op_type"] for o in g["shape_ops_off_path"])
            L.append("Gather/GatherND/Slice/Expand/Where/Range/ConstantOfShape off the path "
                     "(attention mask, position ids, shape arithmetic): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) + ".\n")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


# ---------------------------------------------------------------- main

def main():
    os.makedirs(OUT, exist_ok=True)
    model = make_model()
    rows = make_rows()
    paths = {n: os.path.join(OUT, n) for n in
             ("bert_cls_script.onnx", "bert_cls_dynamo.onnx", "bert_cls_optimized.onnx")}

    meta = OrderedDict()
    meta["bert_cls_script.onnx"] = export_script(model, rows, paths["bert_cls_script.onnx"])
    meta["bert_cls_dynamo.onnx"] = export_dynamo(model, rows, paths["bert_cls_dynamo.onnx"])
    meta["bert_cls_optimized.onnx"] = export_optimized(paths["bert_cls_script.onnx"],
                                                       paths["bert_cls_optimized.onnx"])

    want = [torch_logits(model, feeds(r))[0] for r in rows]
    batch = padded_batch(rows)
    want_batch = torch_logits(model, batch)
    inputs = {"rows": rows, "torch_logits": [w.tolist() for w in want],
              "torch_batch_padded_logits": want_batch.tolist(), "graphs": OrderedDict()}
    graphs = OrderedDict()
    for name, path in paths.items():
        if not os.path.exists(path):
            graphs[name] = meta[name]
            continue
        size = os.path.getsize(path)
        assert size < 1 << 20, (name, size)
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = [s.run(["logits"], feeds(r))[0][0] for r in rows]
        diffs = [float(np.max(np.abs(g - w))) for g, w in zip(got, want)]
        got_b = s.run(["logits"], batch)[0]
        diff_b = float(np.max(np.abs(got_b - np.stack(want))))
        tol = 1e-3 if "optimized" in name else 1e-4
        assert max(diffs + [diff_b]) < tol, (name, diffs, diff_b)
        inputs["graphs"][name] = {"ort_logits": [g.tolist() for g in got],
                                  "max_abs_diff_per_row": diffs,
                                  "ort_batch_padded_logits": got_b.tolist(),
                                  "batch_max_abs_diff": diff_b}
        info, _ = analyse(path)
        info.update(meta[name])
        if info["word_embedding_tensor"]:
            check_word_embedding(path, info["word_embedding_tensor"], model, rows)
        graphs[name] = info
        print(f"{name}: {size} bytes; ORT vs torch {max(diffs):.2e} (batch {diff_b:.2e}); "
              f"word embedding {info['word_embedding_tensor']}")
        print("  path ops:", fmt_ops(info["path_ops"]))

    grads, targets, checks = reference_grads(model, rows)
    for k, g in enumerate(grads):
        np.save(os.path.join(OUT, f"grad_{k}.npy"), g.astype(np.float32))
    pad = [k for k, v in enumerate(rows[1]["attention_mask"]) if v == 0]
    grads_meta = {"targets": targets, "shapes": [list(g.shape) for g in grads],
                  "inputs_embeds_check": checks,
                  "pad_grad_max": float(np.max(np.abs(grads[1][pad]))),
                  "norms": [float(np.linalg.norm(g)) for g in grads]}
    print("targets", targets, "grad norms", grads_meta["norms"])

    versions = (f"Python {platform.python_version()}, torch {torch.__version__.split('+')[0]}, "
                f"transformers {transformers.__version__}, onnx {onnx.__version__}, "
                f"onnxruntime {ort.__version__}, onnxscript {onnxscript.__version__}, "
                f"numpy {np.__version__}")
    cmd = ".venv-dev/bin/python scripts/make_bert_graphs.py"
    doc = {
        "made_by": cmd,
        "versions": versions,
        "objective": "logit",
        "gradient": "d logits[0, target] / d word-embedding output, each row alone (batch 1)",
        "targets": targets,
        "target_rule": "argmax of the row's logits",
        "grad_files": [f"grad_{k}.npy" for k in range(len(rows))],
        "grad_shapes": grads_meta["shapes"],
        "grad_dtype": "float32 (computed in float64)",
        "graphs": graphs,
    }
    write_json(os.path.join(OUT, "graphs.json"), doc)
    write_json(os.path.join(OUT, "inputs.json"), inputs)
    write_readme(graphs, inputs, grads_meta, versions, cmd)
    print(versions)


if __name__ == "__main__":
    sys.exit(main())
