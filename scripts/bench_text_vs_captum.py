#!/usr/bin/env python3
"""Time integrad's text Explain and ExplainBatch against Captum's LayerIntegratedGradients, side by side.

The workloads (the Text: Explain and ExplainBatch vs Captum benchmark): the demo sentiment
model (models/sentiment: all-MiniLM-L6-v2 -> mean pooling -> Linear(384, 2), `input_ids`,
`attention_mask`, `token_type_ids` int64 [b, s], `logits` [b, 2], labels negative/positive;
its tokenizer.json, no padding), PROBABILITY objective (softmax of the logits), the top-1
class as target, 50 trapezoid steps = 51 gradient evaluations per text, attributions at the
word-embedding output (/bert/embeddings/word_embeddings/Gather_output_0) with the baseline
ids = the text's ids with every non-special token replaced by [PAD] (id 0), [CLS]/[SEP] kept,
attention_mask and token_type_ids the text's own (the server's default for a text).

1. One sentence, warm: SENTENCE (20 tokens with [CLS]/[SEP]).
2. --sentences (64) real texts in one call: the held-out test split of the corpus the model
   was trained on (make_text_model.py's load_corpus and train_test_split: 1,290 tweets), those
   of 5 to 40 tokens, --sentences of them drawn without replacement with seed 0, in file
   order; the same texts for both sides.

integrad: `integrad serve --intra-threads THREADS --models models --max-instances
max(SENTENCES, 1024)`; the request carries the text itself (Input.text), model `sentiment`,
METHOD_TRAPEZOID, steps --steps, OBJECTIVE_PROBABILITY, batch_size --batch-size (0: the
server's). 1: one Explain; 2: ONE ExplainBatch call with every text as an Instance and
results_per_event = SENTENCES. The time is from sending the request to the last Explanation
(over gRPC, from this Python process).

Captum: LayerIntegratedGradients(forward, model.bert.embeddings.word_embeddings) on the PyTorch
twin of model.onnx (make_text_fixtures.build_twin: make_text_model.py's module with every
parameter taken from model.onnx's initializers, float32), forward = softmax(model(ids, mask,
types), dim=1), `attribute(ids, baselines=baseline_ids, additional_forward_args=(mask,
types), target=top-1, n_steps=steps + 1, method="riemann_trapezoid", internal_batch_size=K)`,
torch.set_num_threads(THREADS). The time of each text includes its tokenization (the
`tokenizers` Tokenizer of the model's tokenizer.json, padding off:
make_text_fixtures.encode_sentence) and the forward that finds its top-1 class. 2 is a loop
over the texts, one attribute() call each. K is chosen for speed before the timed runs, each
of --captum-batch-sizes (51: all alphas in one pass; 17: three passes) timed: on 1, a warm-up
and --probe runs each; on 2, --batch-probe runs of the whole loop each (after 1, so warm); the
fastest median is Captum's side of that workload.

The twin is checked against onnxruntime (logits and both attribution points, one by one and
batched: make_text_fixtures.check_twin) on the sentence and the first --check texts before
anything is timed.

Agreement: the top-1 class of every text (integrad's target_class vs the twin's argmax), the
token ids (integrad's Explanation.tokens vs the Python tokenizer's), and for the sentence and
the first --check (8) texts the per-token attributions: integrad's Explanation.tokens[i].
attribution against Captum's attributions summed over the hidden axis, times 51/50 (Captum's
riemann_trapezoid weights sum to 50/51); relative L2 per text must be under 1e-3, or the
script fails.

Runs alternate (integrad, Captum, integrad, ...) after one warm-up each, every timed run
after a --settle pause; medians (and ranges) are printed with the ratios: 1. integrad time /
Captum time (goal: at most 0.25), 2. integrad texts per second / Captum texts per second
(goal: at least 4).

    cargo build --release
    .venv-dev/bin/python scripts/bench_text_vs_captum.py [--runs 5] [--threads 2]
        [--steps 50] [--sentences 64] [--batch-size N] [--captum-batch-sizes 51,17]
        [--probe 2] [--batch-probe 1] [--check 8] [--settle 0.5] [--binary PATH]
        [--url http://HOST:PORT]

Without --url it starts target/release/integrad serve (or --binary) on a free loopback port
and stops it at the end. Needs the dev virtualenv (scripts/requirements-dev.txt) and
models/sentiment/minilm.bin (the server rebuilds it on its first start; or
scripts/make_text_model.py --rebuild-only). Nothing is downloaded.
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from captum.attr import LayerIntegratedGradients  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (BINARY, CHANNEL_OPTIONS, REPO, peak_rss_mb, server,  # noqa: E402
                          stubs, wait_ready)
from make_text_fixtures import (attribution_points, build_twin, check_twin,  # noqa: E402
                                encode_sentence, load_tokenizers, objective_forward,
                                ort_session)
from make_text_model import LABELS, SEED, TEST_SIZE, load_corpus  # noqa: E402

MODEL = "sentiment"
MODEL_DIR = os.path.join(REPO, "models", MODEL)
LAYER = "bert.embeddings.word_embeddings"
POINT = "/bert/embeddings/word_embeddings/Gather_output_0"
SENTENCE = ("The flight was delayed for three hours and the staff at the gate were rude to "
            "everyone.")
SENTENCE_TOKENS = 20
MIN_TOKENS, MAX_TOKENS = 5, 40
TOL = 1e-3


def pick_texts(tok, n):
    """n held-out test texts of MIN_TOKENS..MAX_TOKENS tokens, seed 0, in file order."""
    texts, labels = load_corpus()
    _, test, _, _ = train_test_split(texts, labels, test_size=TEST_SIZE, random_state=SEED,
                                     stratify=labels)
    lengths = np.array([len(tok.encode(t).ids) for t in test])
    fit = np.flatnonzero((lengths >= MIN_TOKENS) & (lengths <= MAX_TOKENS))
    if n > len(fit):
        raise SystemExit(f"--sentences {n}: only {len(fit)} test texts have {MIN_TOKENS} to "
                         f"{MAX_TOKENS} tokens")
    pick = np.sort(np.random.default_rng(SEED).choice(fit, size=n, replace=False))
    print(f"texts: {n} of the {len(fit)} held-out test texts with {MIN_TOKENS}-{MAX_TOKENS} "
          f"tokens (of {len(test)}), seed {SEED}: {int(lengths[pick].sum())} tokens in all, "
          f"{int(lengths[pick].min())}-{int(lengths[pick].max())} each, mean "
          f"{lengths[pick].mean():.1f}", flush=True)
    return [test[i] for i in pick]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server; default: start --binary serve")
    ap.add_argument("--binary", default=BINARY, help="the integrad binary to serve with")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sentences", type=int, default=64,
                    help="texts of the ExplainBatch workload")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="ExplainRequest.batch_size (alphas per gradient run); 0: the server's")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to pause before each timed run (0: none)")
    ap.add_argument("--captum-batch-sizes", default="51,17",
                    help="Captum internal_batch_size values to try; the fastest is used")
    ap.add_argument("--probe", type=int, default=2,
                    help="timed runs of each internal_batch_size on the one sentence")
    ap.add_argument("--batch-probe", type=int, default=1,
                    help="timed runs of the whole Captum loop for each internal_batch_size")
    ap.add_argument("--check", type=int, default=8,
                    help="batch texts whose token attributions are compared with Captum's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    tok, _ = load_tokenizers(MODEL_DIR)
    single = encode_sentence(tok, SENTENCE)
    assert len(single["ids"]) == SENTENCE_TOKENS, single["tokens"]
    texts = pick_texts(tok, args.sentences)

    # The twin, checked against onnxruntime on what will be compared.
    model, proto, _ = build_twin(MODEL_DIR)
    points = attribution_points(proto.graph)
    if points["word_embeddings"]["tensor"] != POINT:
        raise SystemExit(f"the word-embedding output is {points['word_embeddings']['tensor']}, "
                         f"not {POINT}")
    run_ort = ort_session(proto, points)
    del proto
    nc = min(args.check, len(texts))
    check_twin(model, run_ort, [single] + [encode_sentence(tok, t) for t in texts[:nc]])
    del run_ort

    with tempfile.TemporaryDirectory() as tmp:
        pb, rpc = stubs(tmp)
        if args.url:
            run(args, pb, rpc, args.url.split("://", 1)[-1], tok, model, texts, load_before)
        else:
            flags = ["--intra-threads", str(args.threads), "--models",
                     os.path.join(REPO, "models"),
                     "--max-instances", str(max(args.sentences, 1024))]
            with server(flags, binary=args.binary) as (address, process):
                run(args, pb, rpc, address, tok, model, texts, load_before, process)


def run(args, pb, rpc, target, tok, model, texts, load_before, process=None):
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    stub = rpc.ExplainerStub(channel)

    def text_input(text):
        return pb.Input(text=pb.Text(text=text))

    wait_ready(stub, pb.PredictRequest(model=MODEL, input=text_input(SENTENCE)), process)
    options = dict(model=MODEL, method=pb.METHOD_TRAPEZOID, steps=args.steps,
                   objective=pb.OBJECTIVE_PROBABILITY, batch_size=args.batch_size)
    single_request = pb.ExplainRequest(input=text_input(SENTENCE), **options)
    batch_request = pb.ExplainBatchRequest(
        request=pb.ExplainRequest(**options),
        instances=[pb.Instance(input=text_input(t)) for t in texts],
        results_per_event=len(texts))

    def explain():
        t = time.perf_counter()
        result, last = None, None
        for event in stub.Explain(single_request, timeout=600):
            if event.WhichOneof("event") == "result":
                result, last = event.result, time.perf_counter()
        if result is None:
            raise SystemExit("Explain returned no explanation")
        return last - t, result

    def explain_batch():
        t = time.perf_counter()
        results, last, progress = {}, None, 0
        for event in stub.ExplainBatch(batch_request, timeout=3600):
            kind = event.WhichOneof("event")
            if kind == "result":
                results[event.result.instance] = event.result
                last = time.perf_counter()
            elif kind == "results":
                for r in event.results.explanations:
                    results[r.instance] = r
                last = time.perf_counter()
            elif kind == "progress":
                progress += 1
        if len(results) != len(texts):
            raise SystemExit(f"ExplainBatch returned {len(results)} of {len(texts)} "
                             "explanations")
        return last - t, results, progress

    # ---- the PyTorch side ----------------------------------------------------------------
    n_steps = args.steps + 1  # riemann_trapezoid n_steps counts alphas
    scale = n_steps / (n_steps - 1)  # its weights sum to (n - 1)/n
    lig = LayerIntegratedGradients(objective_forward(model, "probability"),
                                   model.get_submodule(LAYER))

    def captum_one(text, internal):
        """(top-1 class, per-token attribution sums x 51/50) of one text: tokenize, find the
        target, LayerIG."""
        s = encode_sentence(tok, text)
        ids = torch.from_numpy(s["input"])[None]
        base = torch.from_numpy(s["baseline"])[None]
        types = torch.tensor([s["token_type_ids"]], dtype=torch.int64)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            tgt = int(model(ids, mask, types)[0].argmax())
        attr = lig.attribute(ids, baselines=base, additional_forward_args=(mask, types),
                             target=tgt, n_steps=n_steps, method="riemann_trapezoid",
                             internal_batch_size=internal)
        return tgt, attr.detach()[0].sum(-1) * scale

    def captum_single(internal):
        t = time.perf_counter()
        out = captum_one(SENTENCE, internal)
        return time.perf_counter() - t, out

    def captum_loop(internal):
        t = time.perf_counter()
        out = [captum_one(text, internal) for text in texts]
        return time.perf_counter() - t, out

    def compare(name, text, expl, tgt, ref):
        """Relative L2 of integrad's token attributions vs Captum's; fails on disagreement."""
        ids = encode_sentence(tok, text)["ids"]
        got_ids = [t.id for t in expl.tokens]
        if got_ids != ids:
            raise SystemExit(f"{name}: integrad's token ids {got_ids} are not the tokenizer's "
                             f"{ids}")
        if expl.target_class != tgt:
            raise SystemExit(f"{name}: integrad's target {expl.target_class} is not Captum's "
                             f"top-1 {tgt}")
        ours = np.array([t.attribution for t in expl.tokens], dtype=np.float64)
        ref = ref.double().numpy()
        return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))

    sizes = [int(k) for k in args.captum_batch_sizes.split(",") if k.strip()]

    # ==== 1. one sentence =================================================================
    print(f"\n1. one sentence, {SENTENCE_TOKENS} tokens: {SENTENCE!r}", flush=True)
    t0, first = explain()
    print(f"warm-up Explain: {t0:.3f} s; target {first.target_class} {first.label}, "
          f"evaluations {first.evaluations}, steps {first.steps}, objective "
          f"{pb.Objective.Name(first.objective)}, score {first.score_input:.4f} (baseline "
          f"{first.score_baseline:.4f}), delta {first.convergence_delta:+.2e}, attributed "
          f"{list(first.attributed)}", flush=True)
    if list(first.attributed) != [POINT]:
        raise SystemExit(f"integrad attributed at {list(first.attributed)}, not "
                         f"[{POINT}]")
    if first.objective != pb.OBJECTIVE_PROBABILITY or first.evaluations != n_steps:
        raise SystemExit(f"integrad ran objective {first.objective}, "
                         f"{first.evaluations} evaluations")
    print("  tokens: " + " ".join(f"{t.token}:{t.attribution:+.3f}" for t in first.tokens))
    _, (tgt, ref) = captum_single(sizes[0])
    rel_single = compare("the sentence", SENTENCE, first, tgt, ref)
    print(f"agreement (per-token attributions, Captum x {n_steps}/{n_steps - 1}): target "
          f"{tgt} both, relative L2 {rel_single:.2e}", flush=True)
    if rel_single >= TOL:
        raise SystemExit(f"integrad and Captum disagree on the sentence: relative L2 "
                         f"{rel_single:.2e} >= {TOL}")

    probe = {}
    for k in sizes:
        captum_single(k)  # warm-up
        times = []
        for _ in range(args.probe):
            time.sleep(args.settle)
            times.append(captum_single(k)[0])
        probe[k] = statistics.median(times)
        print(f"Captum internal_batch_size {k}: {probe[k]:.3f} s", flush=True)
    best1 = min(probe, key=probe.get)
    print(f"fastest: internal_batch_size {best1}", flush=True)

    e1, c1 = [], []
    for i in range(args.runs):
        time.sleep(args.settle)
        t, _ = explain()
        e1.append(t)
        time.sleep(args.settle)
        c, _ = captum_single(best1)
        c1.append(c)
        print(f"run {i + 1}: Explain {t:.3f} s, Captum {c:.3f} s, ratio {t / c:.3f}",
              flush=True)

    # ==== 2. ExplainBatch =================================================================
    n = len(texts)
    print(f"\n2. {n} texts, one ExplainBatch call vs a Captum loop", flush=True)
    t0, results, progress = explain_batch()
    print(f"warm-up ExplainBatch: {t0:.3f} s ({n / t0:.1f} texts/s), {progress} progress "
          "events", flush=True)
    tops = []
    for text in texts:
        s = encode_sentence(tok, text)
        ids = torch.from_numpy(s["input"])[None]
        with torch.no_grad():
            tops.append(int(model(ids, torch.ones_like(ids),
                                  torch.tensor([s["token_type_ids"]]))[0].argmax()))
    targets = [results[i].target_class for i in range(n)]
    if targets != tops:
        bad = [i for i in range(n) if targets[i] != tops[i]]
        raise SystemExit(f"{len(bad)} texts' top-1 classes differ: {bad}")
    for i, text in enumerate(texts):
        ids = encode_sentence(tok, text)["ids"]
        if [t.id for t in results[i].tokens] != ids:
            raise SystemExit(f"text {i}: integrad's token ids differ from the tokenizer's")
    counts = np.bincount(targets, minlength=len(LABELS))
    nc = min(args.check, n)
    rels = []
    for i in range(nc):
        tgt, ref = captum_one(texts[i], sizes[0])
        rels.append(compare(f"text {i}", texts[i], results[i], tgt, ref))
    rels = np.array(rels)
    print(f"agreement: top-1 classes of all {n} texts agree ({counts[0]} {LABELS[0]}, "
          f"{counts[1]} {LABELS[1]}), token ids agree; per-token attributions of the first "
          f"{nc}: relative L2 max {rels.max():.2e}, median {np.median(rels):.2e}", flush=True)
    if rels.max() >= TOL:
        raise SystemExit(f"integrad and Captum disagree: relative L2 {rels.max():.2e} >= {TOL}")

    probe2 = {}
    for k in sizes:
        times = []
        for _ in range(args.batch_probe):
            time.sleep(args.settle)
            times.append(captum_loop(k)[0])
        probe2[k] = statistics.median(times)
        print(f"Captum loop, internal_batch_size {k}: {probe2[k]:.3f} s "
              f"({n / probe2[k]:.2f} texts/s)", flush=True)
    best2 = min(probe2, key=probe2.get)
    print(f"fastest: internal_batch_size {best2}", flush=True)
    # Captum's warm-up is its probe runs (the model, the tokenizer and every shape in the
    # loop have been through it).

    e2, c2 = [], []
    for i in range(args.runs):
        time.sleep(args.settle)
        t, _, _ = explain_batch()
        e2.append(t)
        time.sleep(args.settle)
        c, _ = captum_loop(best2)
        c2.append(c)
        print(f"run {i + 1}: ExplainBatch {t:.3f} s ({n / t:.1f} texts/s), Captum {c:.3f} s "
              f"({n / c:.2f} texts/s), ratio {c / t:.2f}", flush=True)

    # ==== summary =========================================================================
    m_e1, m_c1, m_e2, m_c2 = (statistics.median(x) for x in (e1, c1, e2, c2))
    tokens = sum(len(r.tokens) for r in results.values())
    rss = peak_rss_mb(process) if process is not None else None
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nthreads {args.threads} (server --intra-threads), torch.set_num_threads "
          f"{torch.get_num_threads()}, {args.runs} alternating runs, {args.steps} trapezoid "
          f"steps ({n_steps} alphas per text), PROBABILITY, [PAD] baseline at the word "
          f"embeddings, batch_size {args.batch_size or 'server default'}, load average "
          f"{os.getloadavg()[0]:.2f} (at the start {load_before:.2f})")
    print(f"  1. one sentence ({SENTENCE_TOKENS} tokens), warm:")
    print(f"     integrad Explain: median {m_e1:.3f} s ({min(e1):.3f} - {max(e1):.3f})")
    print(f"     Captum LayerIG (internal_batch_size {best1}; "
          + ", ".join(f"{k}: {v:.3f} s" for k, v in probe.items())
          + f" probed): median {m_c1:.3f} s ({min(c1):.3f} - {max(c1):.3f})")
    print(f"     ratio integrad time / Captum time: {m_e1 / m_c1:.3f} (goal: at most 0.25)")
    print(f"  2. {n} texts ({tokens} tokens), one ExplainBatch (results_per_event {n}) vs a "
          "Captum loop:")
    print(f"     integrad ExplainBatch: median {m_e2:.3f} s ({min(e2):.3f} - {max(e2):.3f}), "
          f"{n / m_e2:.1f} texts/s")
    print(f"     Captum LayerIG loop (internal_batch_size {best2}; "
          + ", ".join(f"{k}: {v:.3f} s" for k, v in probe2.items())
          + f" probed): median {m_c2:.3f} s ({min(c2):.3f} - {max(c2):.3f}), "
          f"{n / m_c2:.2f} texts/s")
    print(f"     ratio integrad texts/s / Captum texts/s: {m_c2 / m_e2:.2f} (goal: at least 4)")
    print(f"  agreement (per-token attributions vs Captum x {n_steps}/{n_steps - 1}, relative "
          f"L2): sentence {rel_single:.2e}; first {nc} batch texts max {rels.max():.2e}, "
          f"median {np.median(rels):.2e}; top-1 classes of all {n} + 1 agree")
    print(f"  peak resident memory: server "
          + (f"{rss:.0f} MB" if rss is not None else "n/a (--url)")
          + f", this process (Captum) {own:.0f} MB; ExplainBatch progress events per call: "
          f"{progress}")


if __name__ == "__main__":
    main()
