#!/usr/bin/env python3
"""Make the text fixtures in tests/data/text/: tokenizer parity cases and Captum
LayerIntegratedGradients references for the demo sentiment model (all-MiniLM-L6-v2 ->
mean pooling -> Linear(384, 2), made by scripts/make_text_model.py).

Two independent peers to check integrad's text support against:

1. `tokenizer_cases.json`: the Python `tokenizers` library on the model folder's own
   tokenizer.json, for 200+ single texts and 20+ text pairs (English, punctuation, accents,
   emoji incl. ZWJ sequences and flags, CJK, Hangul, Arabic/Hebrew, URLs, numbers, control
   characters, empty and whitespace-only texts, texts far past 128 tokens):

       tok = tokenizers.Tokenizer.from_file("<model-dir>/tokenizer.json")
       tok.no_padding()            # the file pads to 128; the fixtures do not
       enc = tok.encode(text) or tok.encode(text, pair)   # the file's truncation kept:
                                   # max_length 128, longest_first
       full = <the same tokenizer with no_truncation()>.encode(...)
       overflowing = len(full.ids) > len(enc.ids)

   recording ids, type_ids, tokens, offsets (code point offsets into the text or the
   pair, as the Python binding reports them; sequence_ids says which), special_tokens_mask
   and attention_mask.

2. `captum.json` + `attr/*.npy`: Captum's LayerIntegratedGradients on the PyTorch twin
   of model.onnx, for 12 sentences (3 to 60 tokens), 2 objectives x 2 methods x 2 layers:

       lig = LayerIntegratedGradients(forward, layer)
       attr, delta = lig.attribute(input_ids, baselines=baseline_ids,
                                   additional_forward_args=(attention_mask, token_type_ids),
                                   target=target, n_steps=N, method=METHOD,
                                   internal_batch_size=17, return_convergence_delta=True)

   with forward = model (objective `logit`) or softmax(model(...), dim=1) (`probability`),
   layer = model.bert.embeddings.word_embeddings (the word-embedding lookup output) or
   model.bert.embeddings.LayerNorm (the embeddings' LayerNorm output), METHOD/N =
   riemann_trapezoid/51 (stored x 51/50: integrad TRAPEZOID steps 50) or gausslegendre/50
   (integrad GAUSS_LEGENDRE steps 50). baseline_ids = input_ids with every token that the
   post-processor did not add replaced by [PAD] (id 0); [CLS]/[SEP] kept. target = the
   model's top-1 class. The model runs in float64 for the attributions.

   The PyTorch twin is make_text_model.py's own module (`load_model`: BertModel with eager
   attention, mean pooling, Linear head) with EVERY parameter overwritten from model.onnx's
   initializers (external data from minilm.bin; MatMul weights stored [in, out] are
   transposed back, cross-checked with weights.json's `transpose`). Before any attribution
   the script checks it against onnxruntime on the 12 sentences and their baselines, one by
   one and as one padded batch, on the logits and on both attribution points (max |diff| <
   1e-4), and records the attribution points' ONNX tensor names, found by walking the graph.

Checks the script fails on: the twin vs onnxruntime; that Captum's riemann_trapezoid weights
sum to (n - 1)/n (on the weights and on a linear function, where IG is exact); completeness
(|convergence delta| <= 5% of |F(x) - F(x')|, and where it is above 0.1% the same
attribution with 400 Gauss-Legendre alphas must close it to 0.01%); zero attribution on
[CLS]/[SEP]; tokenizer invariants. What each file is and the numbers of the last run:
tests/data/text/README.md (written by hand; the script does not touch it).

Deterministic: no randomness beyond a seeded linear-function check, one CPU thread,
torch.use_deterministic_algorithms(True). Needs the dev virtualenv
(scripts/requirements-dev.txt) and the model folder with minilm.bin present
(scripts/make_text_model.py --rebuild-only makes it). Nothing is downloaded.

Run from the repository root:
    .venv-dev/bin/python scripts/make_text_fixtures.py [--model-dir DIR]
"""

import argparse
import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import captum
import numpy as np
import onnx
import onnxruntime as ort
import tokenizers
import torch
import transformers
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_text_model import LABELS, load_model, sha256_file  # noqa: E402  (the module model.onnx came from)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "text")
ATTR_DIR = "attr"  # under OUT

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
TOL_ORT = 1e-4  # torch twin vs onnxruntime, absolute, on logits and attribution points
# Completeness: |delta| <= REL * |F(x) - F(x')| + ABS for every case (a wrong baseline or
# target is off by O(1)). The 50-step rules are not that accurate everywhere: on some
# paths the logits jump mid-path (by ~4 over alpha 0.32..0.48 for s08; README), and 50
# Gauss-Legendre nodes, sparse mid-path, leave relative errors up to ~1.4e-2 (and small
# F(x) - F(x') gaps inflate the ratio). So every case above REFINE_ABOVE is refined: Captum
# gausslegendre with REFINE_STEPS alphas must close the gap to REFINE_REL, which shows the
# 50-step delta is quadrature error. (The trapezoid scale is checked on its own.)
COMPLETENESS_REL = 0.05
COMPLETENESS_ABS = 1e-6
REFINE_ABOVE = 1e-3
REFINE_STEPS = 400
REFINE_REL = 1e-4

INTERNAL_BATCH = 17
# (tag, Captum method, Captum n_steps, weight scale, integrad method, integrad steps).
# integrad TRAPEZOID steps=m evaluates m + 1 alphas k/m; Captum's n_steps is the number of
# alphas, and its riemann_trapezoid weights (1/n, ends halved) sum to (n - 1)/n, so Captum
# n_steps=51 times 51/50 is integrad's trapezoid with 50 steps. Gauss-Legendre: same alphas
# and weights on both sides, no scaling.
METHODS = [
    ("trap50", "riemann_trapezoid", 51, 51.0 / 50.0, "TRAPEZOID", 50),
    ("gl50", "gausslegendre", 50, 1.0, "GAUSS_LEGENDRE", 50),
]
OBJECTIVES = ["logit", "probability"]
LAYERS = {  # tag -> module path in the twin
    "word_embeddings": "bert.embeddings.word_embeddings",
    "embeddings_layernorm": "bert.embeddings.LayerNorm",
}

# The 12 Captum sentences: 3 to 60 tokens with [CLS]/[SEP], varied sentiment.
SENTENCES = [
    "I loved this movie",
    "ok",
    "This was a terrible waste of time",
    "The package arrived on Tuesday and contained two books.",
    "Best birthday ever \U0001f389\U0001f60d thank you all!",
    "The service was awful and the food was cold",
    "What a wonderful day, thank you!",
    "Not bad at all",
    "@united my flight was delayed again and nobody told us why. #fail",
    "The hotel was fine, the breakfast was average and the staff were polite.",
    "Great battery, bright screen, but the camera is disappointing in low light.",
    "The plot was slow in the middle, and the first hour dragged on with too many side "
    "characters, but the ending made up for it: the last twenty minutes were tense, "
    "beautifully shot and genuinely moving, and I left the cinema smiling and humming "
    "the soundtrack all the way home that night.",
]
LONG_TOKENS = 60  # the last sentence's length, [CLS]/[SEP] included


# --- files ------------------------------------------------------------------------------


def default_model_dir():
    return os.path.join(REPO, "models", "sentiment")


def rel(path):
    return os.path.relpath(path, REPO)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


# --- tokenizer --------------------------------------------------------------------------


def load_tokenizers(model_dir):
    """(tokenizer as the fixtures use it, the same with truncation off)."""
    path = os.path.join(model_dir, "tokenizer.json")
    tok = tokenizers.Tokenizer.from_file(path)
    tok.no_padding()
    trunc = tok.truncation
    assert trunc is not None and trunc["max_length"] == 128, trunc
    assert trunc["strategy"] == "longest_first" and trunc["stride"] == 0, trunc
    full = tokenizers.Tokenizer.from_file(path)
    full.no_padding()
    full.no_truncation()
    return tok, full


def encode(tok, text, pair=None):
    return tok.encode(text) if pair is None else tok.encode(text, pair)


def utf8_offsets(enc, text, pair):
    """Code point offsets -> UTF-8 byte offsets into the same string (derived, see README)."""
    out = []
    for (start, end), seq in zip(enc.offsets, enc.sequence_ids):
        if seq is None:
            out.append([start, end])
            continue
        s = text if seq == 0 else pair
        out.append([len(s[:start].encode("utf-8")), len(s[:end].encode("utf-8"))])
    return out


def record_encoding(tok, full, text, pair=None, category=None):
    enc = encode(tok, text, pair)
    untruncated = encode(full, text, pair)
    n = len(enc.ids)
    for field in (enc.type_ids, enc.tokens, enc.offsets, enc.sequence_ids,
                  enc.special_tokens_mask, enc.attention_mask):
        assert len(field) == n
    assert all(m == 1 for m in enc.attention_mask), "no padding, so the mask is all ones"
    assert n <= 128
    overflowing = len(untruncated.ids) > n
    assert overflowing == (len(enc.overflowing) > 0), (text[:40], pair)
    if not overflowing:
        assert untruncated.ids == enc.ids
    case = {
        "category": category,
        "text": text,
        "pair": pair,
        "ids": enc.ids,
        "type_ids": enc.type_ids,
        "tokens": enc.tokens,
        "offsets": [list(o) for o in enc.offsets],
        "sequence_ids": enc.sequence_ids,
        "offsets_utf8": utf8_offsets(enc, text, pair),
        "special_tokens_mask": enc.special_tokens_mask,
        "attention_mask": enc.attention_mask,
        "overflowing": overflowing,
        "untruncated_len": len(untruncated.ids),
    }
    for (start, end), seq in zip(enc.offsets, enc.sequence_ids):
        s = text if seq == 0 else pair
        assert seq is None or 0 <= start <= end <= len(s), (text[:40], start, end)
    return case


PARAGRAPH = (
    "The museum reopened last spring after a long renovation. Visitors can now walk "
    "through bright galleries, read short notes beside every painting, and rest in a "
    "quiet garden behind the main hall. Tickets cost twelve euros, children enter free, "
    "and guided tours start every hour from ten to four."
)


def tokenizer_texts():
    """(category, text) for the single-text cases, in a fixed order."""
    plain = [
        "I loved this movie",
        "This was a terrible waste of time",
        "What a wonderful day, thank you!",
        "The service was awful and the food was cold",
        "Not bad at all",
        "The quick brown fox jumps over the lazy dog.",
        "She sells sea shells by the sea shore.",
        "Please call me back when you get a chance.",
        "The meeting has been moved to Thursday afternoon.",
        "I can't believe it's already December!",
        "We'll see what happens; it's hard to say.",
        "They're going to the park, aren't they?",
        "Unbelievably, the unbreakable glass broke.",
        "Antidisestablishmentarianism is a long word.",
        "Tokenization splits words into wordpieces.",
        "HELLO WORLD, THIS IS SHOUTING",
        "MiXeD CaSe TeXt Is StIlL lOwErCaSeD",
        "Internationalization and localization",
        "a",
        "I",
        "ok",
        "x y z",
        "the the the the",
        "Well... I guess so?!",
        "Customer support never answered my emails.",
        "The battery lasts two full days, which is great.",
        "My flight was delayed again and nobody told us why.",
        "Absolutely brilliant!!! Best concert of my life",
        "Worst customer service ever. Cancelled flight, lost bags, no apology.",
        "It is what it is.",
        "Don't stop believing",
        "Rock'n'roll never dies",
        "He said: \"I'll be there at 5.\"",
        "O'Neill and D'Angelo met at McDonald's.",
        "e-mail, re-entry, co-operate, state-of-the-art",
        "The U.S.A. and the U.K. signed the treaty.",
        "Dr. Smith vs. Mr. Jones, etc.",
        "supercalifragilisticexpialidocious",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "unaffable untranslatable unquestionably",
    ]
    punctuation = [
        "!!!",
        "???",
        "...",
        "?!?!",
        "Hello, world!",
        "(parentheses) [brackets] {braces} <angles>",
        "quotes: 'single' \"double\" `backtick`",
        "a/b\\c|d_e-f+g=h",
        "100% sure & 50$ * 2 ^ 3 ~ 4",
        "semi;colon:colon",
        "em\u2014dash en\u2013dash",
        "\u201csmart quotes\u201d and \u2018single\u2019",
        "ellipsis\u2026 character",
        "\u00bfQu\u00e9? \u00a1Hola!",
        "#$%&*@^",
        "....,,,,;;;;",
        "\u00ab guillemets \u00bb",
        "a.b.c.d",
    ]
    accents = [
        "caf\u00e9",
        "na\u00efve r\u00e9sum\u00e9",
        "pi\u00f1ata and jalape\u00f1o",
        "M\u00fcnchen \u00fcber alles",
        "\u00c5ngstr\u00f6m",
        "\u00c5land \u00e5 \u00e6 \u00f8 \u00c6 \u00d8",
        "Cr\u00e8me br\u00fbl\u00e9e",
        "Stra\u00dfe",
        "\u0141\u00f3d\u017a and Gda\u0144sk",
        "\u0130stanbul \u0131\u015f\u0131k",
        "Dvo\u0159\u00e1k \u0160koda",
        "cafe\u0301 (combining acute)",
        "n\u0303 decomposed tilde",
        "\u1e9b\u0323 long s with dots",
        "\u00c9COLE \u00c9L\u00c8VE",
        "Fran\u00e7ois Mitterrand",
        "S\u00e3o Paulo, Bras\u00edlia",
        "\u00de\u00f3rsm\u00f6rk \u00f0",
        "\ufb01 ligature \ufb02",
        "\u212b angstrom sign vs \u00c5",
    ]
    emoji = [
        "\U0001f600",
        "I love it \u2764\ufe0f",
        "\u2764",
        "\U0001f44d\U0001f3fd thumbs up, medium skin",
        "family \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 ZWJ",
        "\U0001f469\u200d\U0001f4bb technologist",
        "rainbow flag \U0001f3f3\ufe0f\u200d\U0001f308",
        "\U0001f1eb\U0001f1f7 \U0001f1ef\U0001f1f5 \U0001f1fa\U0001f1f8 flags",
        "\U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5",
        "keycap 1\ufe0f\u20e3 #\ufe0f\u20e3",
        "Best birthday ever \U0001f389\U0001f60d thank you all!",
        "\U0001f602\U0001f602\U0001f602",
        "great\U0001f44cjob",
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f scotland",
        "snow \u2603 and \u2744\ufe0f",
        "\U0001f9d1\U0001f3ff\u200d\U0001f91d\u200d\U0001f9d1\U0001f3fb holding hands",
        "\u263a smile (BMP)",
        "\u00a9 \u00ae \u2122",
        "\U0001f600 text \U0001f600 more \U0001f600",
        "\U0001f4a9",
        ":) :( :D ;-) <3",
    ]
    cjk = [
        "\u65e5\u672c\u8a9e\u3067\u3059",
        "\u6211\u7231\u5317\u4eac\u5929\u5b89\u95e8",
        "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c",
        "\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a",
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
        "\uc548\ub155\ud558\uc138\uc694",
        "\u4e2d\u6587\uff0c\u6807\u70b9\u3002",
        "\u7e41\u9ad4\u4e2d\u6587\u5b57",
        "\uff21\uff22\uff23 fullwidth \uff11\uff12\uff13",
        "\uff8a\uff9d\uff76\uff78 halfwidth katakana",
        "\u30ac\u30ae\u30b0 voiced kana",
        "\U00020000 CJK extension B",
    ]
    rtl = [
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
        "\u0627\u0644\u0644\u063a\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
        "\u0643\u064e\u062a\u064e\u0628\u064e with harakat",
        "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
        "\u05e2\u05b4\u05d1\u05b0\u05e8\u05b4\u05d9\u05ea with niqqud",
        "\u0661\u0662\u0663 Arabic-Indic digits",
        "\u0641\u0627\u0631\u0633\u06cc \u06cc\u06a9",
        "\u200f\u05e9\u05dc\u05d5\u05dd\u200e RLM LRM marks",
        "\u202eoverride\u202c bidi",
        "\u0627\u0644\u0633\u0644\u0627\u0645 \u0639\u0644\u064a\u0643\u0645!",
    ]
    mixed = [
        "hello \u4e16\u754c world",
        "Tokyo \u6771\u4eac and Seoul \uc11c\uc6b8",
        "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
        "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u03b1\u03b2\u03b3",
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
        "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 Thai",
        "abc\u4e2d\u6587def",
        "English \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea mixed",
        "Caf\u00e9 \u2615 \u65e5\u672c \U0001f1ef\U0001f1f5",
        "\u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8 Georgian",
    ]
    web = [
        "https://example.com/path?query=1&x=y#frag",
        "http://www.test.org",
        "visit www.example.co.uk today",
        "mail me at john.doe+tag@example.com",
        "@united thanks for the quick rebooking",
        "@user_name123 hi",
        "#blessed #TBT #100DaysOfCode",
        "RT @someone: check this out http://t.co/abc123",
        "file:///home/user/doc.txt",
        "C:\\Users\\me\\file.txt",
        "ftp://files.example.net/a_b-c.tar.gz",
        "<html><body>tag soup</body></html>",
        "user@host:~$ ls -la",
    ]
    numbers = [
        "0",
        "42",
        "3.14159",
        "1,000,000",
        "-273.15",
        "1e-10",
        "2024-12-31",
        "12:34:56",
        "+1 (555) 123-4567",
        "$19.99 and \u20ac5,50 and \u00a3100",
        "123456789012345678901234567890",
        "\u00bd \u00be \u2153",
        "x\u00b2 + y\u00b3",
        "v2.3.1-rc.4",
        "50% off, 2x faster, #1 rated",
    ]
    control = [
        "tab\tseparated\tvalues",
        "line one\nline two",
        "windows\r\nline end",
        "\ttab first",
        "trailing newline\n",
        "nul\x00byte",
        "bell\x07and backspace\x08",
        "escape\x1b[31mred\x1b[0m",
        "zero\u200bwidth\u200bspace",
        "joiner\u200dand non\u200cjoiner",
        "no\u00a0break space",
        "ideographic\u3000space",
        "\ufeffbyte order mark",
        "line\u2028separator",
        "para\u2029separator",
        "soft\u00adhyphen",
        "replacement \ufffd char",
        "del\x7fchar",
        "\x0cform feed\x0bvertical tab",
        "c1\x85next line",
    ]
    specials = [
        "[CLS]",
        "[SEP]",
        "[PAD] [UNK] [MASK]",
        "a [MASK] in the middle",
        "[cls] lowercase is not special",
        "text[SEP]glued",
    ]
    blank = ["", " ", "   ", "\t", "\n", "\t \n \r\n", "\u00a0", "\u3000\u3000", "\u200b"]
    edge = [
        "a" * 100,  # max_input_chars_per_word is 100: still word pieces
        "a" * 101,  # 101 characters: [UNK]
        "x" * 300,
        "word " * 126,  # 126 + [CLS] + [SEP] = 128 tokens: fits exactly
        "word " * 127,  # 129 tokens: truncated by one
        "\u4e2d" * 200,  # each CJK character is its own token
        "\U0001f600" * 150,  # each emoji its own [UNK]
    ]
    long = [
        PARAGRAPH,
        PARAGRAPH + " " + PARAGRAPH,
        " ".join([PARAGRAPH] * 6),
        " ".join(["The long queue at the airport security check was frustrating"] * 30),
        "\n".join(f"{i}. item number {i} costs {i * 3}.50 euros" for i in range(1, 61)),
        " ".join(["na\u00efve caf\u00e9 \U0001f600 \u65e5\u672c"] * 40),
    ]
    cases = []
    for category, texts in [
        ("plain", plain), ("punctuation", punctuation), ("accents", accents),
        ("emoji", emoji), ("cjk", cjk), ("rtl", rtl), ("mixed", mixed), ("web", web),
        ("numbers", numbers), ("control", control), ("special_literal", specials),
        ("blank", blank), ("edge", edge), ("long", long),
    ]:
        cases += [(category, t) for t in texts]
    # Systematic variants of the plain sentences: upper case, and with leading/trailing
    # spaces (offsets must still point into the original string).
    cases += [("variant_upper", t.upper()) for t in plain[:10]]
    cases += [("variant_spaces", "  " + t + "  ") for t in plain[:10]]
    seen = {t for _, t in cases}
    cases += [("captum_sentence", s) for s in SENTENCES if s not in seen]
    return cases


def tokenizer_pairs():
    return [
        ("How old are you?", "I am six years old."),
        ("I loved this movie", "It was boring"),
        ("", ""),
        ("", "only the pair"),
        ("only the text", ""),
        ("caf\u00e9 na\u00efve", "r\u00e9sum\u00e9 \u00c5ngstr\u00f6m"),
        ("\U0001f468\u200d\U0001f469\u200d\U0001f467 family", "\U0001f1eb\U0001f1f7 flag"),
        ("\u65e5\u672c\u8a9e", "\ud55c\uad6d\uc5b4"),
        ("\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05dc\u05d5\u05dd"),
        ("https://example.com", "@handle #tag"),
        ("line\none", "tab\tpair"),
        ("   ", "\t"),
        ("[SEP]", "[CLS]"),
        ("Question: what is 2+2?", "Answer: 4"),
        (PARAGRAPH, "short pair"),
        ("short text", PARAGRAPH),
        (" ".join([PARAGRAPH] * 3), "a short answer"),  # only the text is cut
        ("a short question", " ".join([PARAGRAPH] * 3)),  # only the pair is cut
        (" ".join([PARAGRAPH] * 2), " ".join([PARAGRAPH] * 3)),  # both cut, longest first
        ("word " * 63, "word " * 63),  # 63 + 63 + 3 = 129: one removed
        ("word " * 70, "word " * 40),  # 70 + 40 + 3 = 113: fits
        ("\u4e2d" * 100, "\U0001f600" * 100),  # both long, one token per character
    ]


def make_tokenizer_cases(model_dir):
    tok, full = load_tokenizers(model_dir)
    singles = tokenizer_texts()
    pairs = tokenizer_pairs()
    assert len(singles) >= 200 and len(pairs) >= 20, (len(singles), len(pairs))
    texts = [t for _, t in singles]
    assert len(set(texts)) == len(texts), "duplicate tokenizer texts"
    cases = [record_encoding(tok, full, t, None, c) for c, t in singles]
    cases += [record_encoding(tok, full, t, p, "pair") for t, p in pairs]
    # Invariants the fixtures promise (and integrad should too).
    for case in cases:
        ids, seq, mask = case["ids"], case["sequence_ids"], case["special_tokens_mask"]
        assert ids[0] == 101 and ids[-1] == 102, case["text"][:40]
        assert mask == [1 if s is None else 0 for s in seq]
        if case["pair"] is None:
            assert all(t == 0 for t in case["type_ids"])
    # The boundary cases behave as designed.
    by_text = {c["text"]: c for c in cases if c["pair"] is None}
    assert not by_text["word " * 126]["overflowing"] and len(by_text["word " * 126]["ids"]) == 128
    over = by_text["word " * 127]
    assert over["overflowing"] and over["untruncated_len"] == 129, over["untruncated_len"]
    assert by_text["a" * 101]["tokens"] == ["[CLS]", "[UNK]", "[SEP]"]
    n_over = sum(c["overflowing"] for c in cases)
    n_unk = sum(100 in c["ids"] for c in cases)
    print(f"tokenizer: {len(singles)} texts + {len(pairs)} pairs, {n_over} truncated, "
          f"{n_unk} with [UNK]")
    trunc = tok.truncation
    return {
        "tokenizers_version": tokenizers.__version__,
        "tokenizer_json": rel(os.path.join(model_dir, "tokenizer.json")),
        "tokenizer_json_sha256": sha256_file(os.path.join(model_dir, "tokenizer.json")),
        "max_length": trunc["max_length"],
        "truncation": {"max_length": trunc["max_length"], "strategy": trunc["strategy"],
                       "stride": trunc["stride"], "direction": trunc["direction"]},
        "padding": None,
        "offsets_unit": "Unicode code points into `text` (sequence_ids 0) or `pair` "
                        "(sequence_ids 1); [0, 0] for special tokens (sequence_ids null), as "
                        "Python tokenizers reports them. offsets_utf8: the same converted to "
                        "UTF-8 byte offsets into the same string (derived by this script)",
        "overflowing": "truncation removed tokens: the same tokenizer with no_truncation() "
                       "gives more ids (untruncated_len)",
        "n_cases": len(cases),
        "cases": cases,
    }


# --- the PyTorch twin of model.onnx -----------------------------------------------------


def node_module(node):
    """'/bert/encoder/layer.0/attention/self/query/MatMul' -> 'bert.encoder.layer.0...query'."""
    parts = node.name.strip("/").split("/")
    return ".".join(parts[:-1])


def onnx_weights(graph, param_names):
    """{torch parameter name: (initializer name, transposed)} for every initializer."""
    inits = {t.name for t in graph.initializer}
    mapping = {}
    for name in inits:
        if name in param_names:
            mapping[name] = (name, False)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and node.input[1] not in param_names:
            key = node_module(node) + ".weight"
            assert key in param_names and key not in mapping, (node.name, key)
            mapping[key] = (node.input[1], True)  # MatMul(x, W^T): stored [in, out]
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            key = node.input[1]
            assert key in mapping and trans_b == 1, (node.name, key, trans_b)
    used = {init for init, _ in mapping.values()}
    assert used == inits, f"initializers not mapped: {sorted(inits - used)}"
    missing = sorted(set(param_names) - set(mapping))
    assert not missing, f"parameters not in model.onnx: {missing}"
    return mapping


def check_manifest(mapping, model_dir):
    """weights.json (the external tensors) must agree with the mapping, transposes included."""
    with open(os.path.join(model_dir, "weights.json")) as f:
        manifest = json.load(f)
    by_init = {init: (key, t) for key, (init, t) in mapping.items()}
    for entry in manifest["tensors"]:
        key, transposed = by_init[entry["initializer"]]
        assert key == "bert." + entry["safetensors"], (key, entry["safetensors"])
        assert transposed == entry["transpose"], (key, transposed, entry["transpose"])
    return len(manifest["tensors"]), sum(e["transpose"] for e in manifest["tensors"])


def build_twin(model_dir):
    """make_text_model.py's module with every parameter taken from model.onnx."""
    path = os.path.join(model_dir, "model.onnx")
    proto = onnx.load(path)  # external data (minilm.bin) loaded from the folder
    model = load_model().eval()
    params = dict(model.named_parameters())
    mapping = onnx_weights(proto.graph, set(params))
    n_ext, n_ext_t = check_manifest(mapping, model_dir)
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    with torch.no_grad():
        for p in params.values():
            p.fill_(float("nan"))
            p.requires_grad_(False)
        for key, (init, transposed) in mapping.items():
            array = arrays[init].T if transposed else arrays[init]
            assert tuple(array.shape) == tuple(params[key].shape), (key, array.shape)
            params[key].copy_(torch.from_numpy(np.array(array, dtype=np.float32, copy=True)))
        assert not any(torch.isnan(p).any() for p in params.values())
    # The non-parameter state: position ids (a Constant the Slice before the position
    # Gather reads) and the buffered token type ids (unused: the graph takes token_type_ids).
    position_const = position_ids_constant(proto.graph)
    position_ids = model.bert.embeddings.position_ids.numpy()
    assert np.array_equal(position_const.reshape(-1), position_ids.reshape(-1))
    n_t = sum(t for _, t in mapping.values())
    print(f"twin: {len(mapping)} parameters from {len(arrays)} initializers ({n_t} transposed "
          f"MatMul weights); weights.json agrees on its {n_ext} external tensors ({n_ext_t} "
          "transposed)")
    return model, proto, {"parameters": len(mapping), "transposed": n_t,
                          "external": n_ext, "external_transposed": n_ext_t}


def position_ids_constant(graph):
    producers = {o: n for n in graph.node for o in n.output}
    gather = next(n for n in graph.node if n.op_type == "Gather"
                  and n.input[0].endswith("position_embeddings.weight"))
    node = producers[gather.input[1]]
    assert node.op_type == "Slice", node.op_type
    const = producers[node.input[0]]
    assert const.op_type == "Constant", const.op_type
    return numpy_helper.to_array(const.attribute[0].t)


def attribution_points(graph):
    """ONNX tensor names of the word-embedding Gather output and of the first
    LayerNormalization after it (the embeddings' LayerNorm), walking the graph."""
    inits = {t.name for t in graph.initializer}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"
               and n.input[0] in inits]
    assert len(gathers) == 1, [n.name for n in gathers]
    gather = gathers[0]
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # Breadth-first from the Gather output: the nearest LayerNormalization.
    frontier, seen, found = [gather.output[0]], set(), []
    while frontier and not found:
        nxt = []
        for tensor in frontier:
            for n in consumers.get(tensor, []):
                if n.name in seen:
                    continue
                seen.add(n.name)
                if n.op_type == "LayerNormalization":
                    found.append(n)
                nxt += list(n.output)
        frontier = nxt
    assert len(found) == 1, [n.name for n in found]
    ln = found[0]
    table = gather.input[0]
    return {
        "word_embeddings": {"tensor": gather.output[0], "node": gather.name,
                            "op_type": "Gather", "table_initializer": table,
                            "indices": "input_ids"},
        "embeddings_layernorm": {"tensor": ln.output[0], "node": ln.name,
                                 "op_type": "LayerNormalization",
                                 "epsilon": next(a.f for a in ln.attribute if a.name == "epsilon")},
    }


def ort_session(proto, points):
    """onnxruntime on model.onnx with the attribution points as extra outputs."""
    extra = onnx.ModelProto()
    extra.CopyFrom(proto)
    for p in points.values():
        extra.graph.output.append(
            onnx.helper.make_tensor_value_info(p["tensor"], onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        extra.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = ["logits"] + [p["tensor"] for p in points.values()]
    return lambda feeds: dict(zip(["logits", *points], session.run(names, feeds)))


def twin_outputs(model, feeds):
    """logits and the two layers' outputs from the torch twin."""
    got = {}
    hooks = [model.get_submodule(path).register_forward_hook(
        lambda m, i, o, tag=tag: got.__setitem__(tag, o.detach()))
        for tag, path in LAYERS.items()]
    try:
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    finally:
        for h in hooks:
            h.remove()
    assert all(got[t].dtype == dtype for t in LAYERS)
    return {"logits": logits.numpy(), **{t: got[t].numpy() for t in LAYERS}}


def padded(encodings):
    n = max(len(ids) for ids, _ in encodings)
    feeds = {k: np.zeros((len(encodings), n), dtype=np.int64) for k in INPUTS}
    for row, (ids, types) in enumerate(encodings):
        feeds["input_ids"][row, :len(ids)] = ids
        feeds["attention_mask"][row, :len(ids)] = 1
        feeds["token_type_ids"][row, :len(ids)] = types
    return feeds


def check_twin(model, run_ort, sentences):
    """Max |diff| twin (float32) vs onnxruntime per output, one by one and batched."""
    worst = {k: 0.0 for k in ["logits", *LAYERS]}
    groups = [[s] for s in sentences] + [sentences]
    for group in groups:
        for which in ("input", "baseline"):
            feeds = padded([(s[which], s["token_type_ids"]) for s in group])
            ref = run_ort(feeds)
            got = twin_outputs(model, feeds)
            mask = feeds["attention_mask"].astype(bool)
            for k in worst:
                diff = np.abs(ref[k] - got[k])
                if k != "logits":  # padded rows of the batch: compare real tokens only
                    diff = diff[mask]
                worst[k] = max(worst[k], float(diff.max()))
    print("twin vs onnxruntime (float32, " + f"{len(sentences)} sentences + baselines, one by one "
          "and batched): " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    assert all(v < TOL_ORT for v in worst.values()), worst
    return worst


def check_twin_logits64(model64, run_ort, sentences):
    worst = 0.0
    for s in sentences:
        feeds = padded([(s["input"], s["token_type_ids"])])
        ref = run_ort(feeds)["logits"]
        with torch.no_grad():
            got = model64(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
        worst = max(worst, float(np.abs(ref - got).max()))
    print(f"twin float64 vs onnxruntime: max |logit diff| {worst:.2e}")
    assert worst < TOL_ORT, worst
    return worst


# --- Captum -----------------------------------------------------------------------------


def check_trapezoid_scaling():
    """Captum's riemann_trapezoid weights sum to (n - 1)/n; x n/(n - 1) makes it exact on a
    linear function (where IG = w * (x - x') for any rule whose weights sum to 1)."""
    steps, _ = approximation_parameters("riemann_trapezoid")
    n = 51
    weight_sum = float(sum(steps(n)))
    assert abs(weight_sum - (n - 1) / n) < 1e-12, weight_sum
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(7, 3).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 7, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    x = torch.randn(2, 7, generator=g, dtype=torch.float64)
    b = torch.randn(2, 7, generator=g, dtype=torch.float64)
    exact = lin.weight[1].detach() * (x - b)
    ig = IntegratedGradients(lin)
    trap = ig.attribute(x, baselines=b, target=1, method="riemann_trapezoid", n_steps=n)
    gl = ig.attribute(x, baselines=b, target=1, method="gausslegendre", n_steps=50)
    # Captum multiplies the float64 gradients by float32 step sizes
    # (torch.tensor(step_sizes).float()), so "exact" means to float32 rounding here.
    scale = float(exact.abs().max())
    err_raw = float((trap - exact).abs().max()) / scale
    err_scaled = float((trap * n / (n - 1) - exact).abs().max()) / scale
    err_gl = float((gl - exact).abs().max()) / scale
    ratio = float(trap.sum() / exact.sum())
    assert err_scaled < 1e-6 and err_gl < 1e-6, (err_scaled, err_gl)
    assert abs(ratio - (n - 1) / n) < 1e-6 and err_raw > 1e-3, (ratio, err_raw)
    print(f"trapezoid scaling: weights sum {weight_sum:.12f} = 50/51; on a linear function "
          f"Captum/exact = {ratio:.9f}, max relative |err| {err_raw:.2e} raw, {err_scaled:.2e} "
          f"x 51/50, Gauss-Legendre {err_gl:.2e}")
    return {"captum_weight_sum_n51": weight_sum, "linear_ratio": ratio,
            "linear_max_rel_err_raw": err_raw, "linear_max_rel_err_scaled": err_scaled,
            "linear_max_rel_err_gausslegendre": err_gl}


def objective_forward(model, objective):
    if objective == "logit":
        return lambda ids, mask, types: model(ids, mask, types)
    return lambda ids, mask, types: torch.softmax(model(ids, mask, types), dim=1)


def encode_sentence(tok, sentence):
    enc = tok.encode(sentence)
    ids = enc.ids
    special = enc.special_tokens_mask
    assert [i for i, m in zip(ids, special) if m] == [101, 102], (sentence, enc.tokens)
    assert all((i in (101, 102)) == bool(m) for i, m in zip(ids, special)), sentence
    baseline = [i if m else 0 for i, m in zip(ids, special)]
    return {
        "sentence": sentence,
        "input": np.array(ids, dtype=np.int64),
        "baseline": np.array(baseline, dtype=np.int64),
        "token_type_ids": list(enc.type_ids),
        "ids": ids,
        "baseline_ids": baseline,
        "tokens": enc.tokens,
        "offsets": [list(o) for o in enc.offsets],
        "special_tokens_mask": special,
    }


def make_captum(model64, model32, run_ort, sentences, out_dir):
    os.makedirs(os.path.join(out_dir, ATTR_DIR), exist_ok=True)
    results, deltas, refined_rows = [], [], []
    for si, s in enumerate(sentences):
        feeds = padded([(s["input"], s["token_type_ids"])])
        feeds_b = padded([(s["baseline"], s["token_type_ids"])])
        ids, mask, types = (torch.from_numpy(feeds[k]) for k in INPUTS)
        ids_b = torch.from_numpy(feeds_b["input_ids"])
        assert torch.equal(torch.from_numpy(feeds_b["attention_mask"]), mask)
        with torch.no_grad():
            logits64 = model64(ids, mask, types)[0]
            logits64_b = model64(ids_b, mask, types)[0]
            logits32 = model32(ids, mask, types)[0].double()
        logits_ort = run_ort(feeds)["logits"][0].astype(np.float64)
        target = int(logits64.argmax())
        assert target == int(np.argmax(logits_ort)) == int(logits32.argmax())
        prob64 = torch.softmax(logits64, 0)
        prob32 = torch.softmax(logits32, 0)
        s.update({
            "target": target, "label": LABELS[target],
            "logits_float64": logits64.tolist(), "logits_baseline_float64": logits64_b.tolist(),
            "logits_onnxruntime": logits_ort.tolist(),
            "probabilities_float64": prob64.tolist(),
            "float32_vs_float64_max_abs_logit_diff": float((logits32 - logits64).abs().max()),
            "float32_vs_float64_max_abs_prob_diff": float((prob32 - prob64).abs().max()),
            "onnxruntime_vs_float64_max_abs_logit_diff":
                float(np.abs(logits_ort - logits64.numpy()).max()),
            "cases": [],
        })
        for layer_tag, layer_path in LAYERS.items():
            layer = model64.get_submodule(layer_path)
            for objective in OBJECTIVES:
                forward = objective_forward(model64, objective)
                with torch.no_grad():
                    f_x = float(forward(ids, mask, types)[0, target])
                    f_b = float(forward(ids_b, mask, types)[0, target])
                lig = LayerIntegratedGradients(forward, layer)
                refined = None
                for tag, method, n_steps, scale, ig_method, ig_steps in METHODS:
                    t0 = time.time()
                    attr, delta = lig.attribute(
                        ids, baselines=ids_b, additional_forward_args=(mask, types),
                        target=target, n_steps=n_steps, method=method,
                        internal_batch_size=INTERNAL_BATCH, return_convergence_delta=True)
                    attr = attr.detach()[0] * scale  # [seq, 384] float64
                    assert attr.dtype == torch.float64 and attr.shape == (len(s["ids"]), 384)
                    total = float(attr.sum())
                    conv = total - (f_x - f_b)
                    captum_delta = float(delta[0])
                    # Captum's own delta is of its unscaled sum.
                    expect = total / scale - (f_x - f_b)
                    assert abs(expect - captum_delta) < 1e-9 * max(1.0, abs(f_x - f_b)), \
                        (expect, captum_delta)
                    special = torch.tensor(s["special_tokens_mask"], dtype=torch.bool)
                    special_rows = float(attr[special].abs().max())
                    assert special_rows == 0.0, special_rows  # input == baseline there
                    name = f"s{si:02d}_{layer_tag}_{objective}_{tag}.npy"
                    np.save(os.path.join(out_dir, ATTR_DIR, name), attr.numpy().astype(np.float32))
                    gap = f_x - f_b
                    rel_err = abs(conv) / max(abs(gap), 1e-12)
                    deltas.append((si, layer_tag, objective, tag, conv, gap, rel_err))
                    s["cases"].append({
                        "layer": layer_tag, "objective": objective, "method": tag,
                        "captum_method": method, "captum_n_steps": n_steps,
                        "weight_scale": scale,
                        "integrad_method": ig_method, "integrad_steps": ig_steps,
                        "attribution_file": f"{ATTR_DIR}/{name}",
                        "token_sums": attr.sum(dim=1).tolist(),
                        "score_input": f_x, "score_baseline": f_b,
                        "attribution_sum": total, "convergence_delta": conv,
                        "relative_delta": rel_err,
                        "captum_convergence_delta": captum_delta,
                    })
                    print(f"  s{si:02d} {len(s['ids']):2d} tok {layer_tag:20s} {objective:11s} "
                          f"{tag:6s} F(x) {f_x:+.6f} F(x') {f_b:+.6f} sum {total:+.6f} "
                          f"delta {conv:+.2e} "
                          f"(rel {rel_err:.1e}) {time.time() - t0:.1f} s", flush=True)
                    assert abs(conv) <= COMPLETENESS_REL * abs(gap) + COMPLETENESS_ABS, \
                        f"completeness: delta {conv} vs F(x) - F(x') {gap}"
                    if rel_err > REFINE_ABOVE:
                        if refined is None:
                            refined = refine(lig, ids, ids_b, mask, types, target, f_x, f_b)
                        fine = refined["attribution"]
                        token_diff = (attr.sum(1) - fine.sum(1)).abs().max()
                        s["cases"][-1]["refined"] = {
                            **{k: v for k, v in refined.items() if k != "attribution"},
                            "max_abs_diff_vs_refined": float((attr - fine).abs().max()),
                            "max_abs_token_sum_diff_vs_refined": float(token_diff),
                        }
                        refined_rows.append((si, layer_tag, objective, tag, rel_err,
                                             refined["relative_delta"]))
        results.append(s)
    return results, deltas, refined_rows


def refine(lig, ids, ids_b, mask, types, target, f_x, f_b):
    """The same attribution with REFINE_STEPS Gauss-Legendre alphas: completeness must hold
    to REFINE_REL there."""
    t0 = time.time()
    attr, delta = lig.attribute(
        ids, baselines=ids_b, additional_forward_args=(mask, types), target=target,
        n_steps=REFINE_STEPS, method="gausslegendre", internal_batch_size=4 * INTERNAL_BATCH,
        return_convergence_delta=True)
    attr = attr.detach()[0]
    total = float(attr.sum())
    conv = total - (f_x - f_b)
    rel_err = abs(conv) / max(abs(f_x - f_b), 1e-12)
    print(f"    refined: gausslegendre {REFINE_STEPS}: sum {total:+.6f} delta {conv:+.2e} "
          f"(rel {rel_err:.1e}) {time.time() - t0:.1f} s", flush=True)
    assert rel_err < REFINE_REL, f"refined completeness: delta {conv} vs {f_x - f_b}"
    return {"captum_method": "gausslegendre", "captum_n_steps": REFINE_STEPS,
            "attribution_sum": total, "convergence_delta": conv, "relative_delta": rel_err,
            "attribution": attr}


def sentence_record(s):
    out = {k: v for k, v in s.items() if k not in ("input", "baseline")}
    out["attention_mask"] = [1] * len(s["ids"])
    return out


def delta_summary(deltas):
    summary = {}
    for layer in LAYERS:
        for objective in OBJECTIVES:
            for tag, *_ in METHODS:
                rows = [d for d in deltas if d[1:4] == (layer, objective, tag)]
                summary[f"{layer}/{objective}/{tag}"] = {
                    "cases": len(rows),
                    "max_abs_delta": max(abs(d[4]) for d in rows),
                    "max_relative_delta": max(d[6] for d in rows),
                    "median_relative_delta": float(np.median([d[6] for d in rows])),
                }
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=default_model_dir(),
                        help="the sentiment model folder (default: models/sentiment if it "
                             "exists, else models/sentiment)")
    args = parser.parse_args()
    model_dir = os.path.abspath(args.model_dir)
    started = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    attr_dir = os.path.join(OUT, ATTR_DIR)
    os.makedirs(attr_dir, exist_ok=True)
    for stale in os.listdir(attr_dir):  # a previous run's cases
        if stale.endswith(".npy"):
            os.remove(os.path.join(attr_dir, stale))
    print(f"model folder {rel(model_dir)}")

    # 1. Tokenizer parity cases.
    tok_cases = make_tokenizer_cases(model_dir)
    write_json(os.path.join(OUT, "tokenizer_cases.json"), tok_cases)

    # 2. The twin, checked against onnxruntime before anything else.
    model32, proto, twin_info = build_twin(model_dir)
    points = attribution_points(proto.graph)
    for tag, p in points.items():
        print(f"attribution point {tag}: {p['tensor']} ({p['node']})")
    run_ort = ort_session(proto, points)
    del proto
    tok, _ = load_tokenizers(model_dir)
    sentences = [encode_sentence(tok, s) for s in SENTENCES]
    lengths = [len(s["ids"]) for s in sentences]
    assert min(lengths) >= 3 and max(lengths) <= 60 and lengths[-1] == LONG_TOKENS, lengths
    worst_ort = check_twin(model32, run_ort, sentences)

    model64 = load_model().eval()
    model64.load_state_dict(model32.state_dict())
    model64 = model64.double()
    for p in model64.parameters():
        p.requires_grad_(False)
    worst_ort64 = check_twin_logits64(model64, run_ort, sentences)

    # 3. Captum.
    scaling = check_trapezoid_scaling()
    t0 = time.time()
    results, deltas, refined_rows = make_captum(model64, model32, run_ort, sentences, OUT)
    captum_s = time.time() - t0
    f32 = max(s["float32_vs_float64_max_abs_logit_diff"] for s in results)
    f32p = max(s["float32_vs_float64_max_abs_prob_diff"] for s in results)
    print(f"float32 vs float64 twin: max |logit diff| {f32:.2e}, max |prob diff| {f32p:.2e}")
    summary = delta_summary(deltas)
    print(f"refined {len(refined_rows)} cases (relative delta > {REFINE_ABOVE:g}); worst refined "
          f"relative delta {max((r[5] for r in refined_rows), default=0):.1e}")
    for k, v in summary.items():
        print(f"delta {k}: max |delta| {v['max_abs_delta']:.2e}, "
              f"max rel {v['max_relative_delta']:.2e}, median rel {v['median_relative_delta']:.2e}")

    meta = {
        "versions": {"torch": torch.__version__, "captum": captum.__version__,
                     "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "numpy": np.__version__},
        "model": {
            "onnx": rel(os.path.join(model_dir, "model.onnx")),
            "onnx_sha256": sha256_file(os.path.join(model_dir, "model.onnx")),
            "external_data": rel(os.path.join(model_dir, "minilm.bin")),
            "external_data_sha256": sha256_file(os.path.join(model_dir, "minilm.bin")),
            "labels": LABELS,
            "twin": twin_info,
            "twin_vs_onnxruntime_max_abs_diff_float32": worst_ort,
            "twin_vs_onnxruntime_max_abs_logit_diff_float64": worst_ort64,
            "float32_vs_float64_max_abs_logit_diff": f32,
            "float32_vs_float64_max_abs_prob_diff": f32p,
        },
        "attribution_points": {
            tag: {**points[tag], "torch_module": LAYERS[tag],
                  "shape": ["sequence", 384]} for tag in LAYERS},
        "layer_baseline": "Captum LayerIntegratedGradients runs the model on baseline_ids "
                          "(same attention_mask and token_type_ids) and takes the layer's "
                          "output there as the layer baseline; the path is "
                          "baseline_out + alpha * (input_out - baseline_out) at that layer, "
                          "the rest of the model downstream of it",
        "baseline": "input ids with every token whose special_tokens_mask is 0 replaced by "
                    "[PAD] (id 0); [CLS] (101) and [SEP] (102) kept; attention_mask all "
                    "ones and token_type_ids zeros, as the input's",
        "target": "the model's top-1 class for the sentence (argmax of the logits)",
        "objectives": {"logit": "logits[:, target]",
                       "probability": "softmax(logits, dim=1)[:, target]"},
        "methods": {tag: {"captum_method": m, "captum_n_steps": n, "weight_scale": sc,
                          "integrad_method": im, "integrad_steps": st}
                    for tag, m, n, sc, im, st in METHODS},
        "trapezoid_scaling_check": scaling,
        "captum_call": {"internal_batch_size": INTERNAL_BATCH, "dtype": "float64",
                        "return_convergence_delta": True,
                        "attribute_to_layer_input": False},
        "convergence_delta": "attribution_sum - (score_input - score_baseline), after the "
                             "weight scale; captum_convergence_delta is Captum's own "
                             "(of the unscaled attributions)",
        "completeness_check": {
            "rule": "|convergence_delta| <= rel * |F(x) - F(x')| + abs",
            "rel": COMPLETENESS_REL, "abs": COMPLETENESS_ABS,
            "refine": f"cases with relative_delta > {REFINE_ABOVE:g} were recomputed with "
                      f"Captum gausslegendre n_steps={REFINE_STEPS} (case['refined']), whose "
                      f"relative delta must be < {REFINE_REL:g}",
            "refined_cases": len(refined_rows),
            "refined_max_relative_delta": max((r[5] for r in refined_rows), default=None)},
        "delta_summary": summary,
        "attribution_files": "attr/s<NN>_<layer>_<objective>_<method>.npy: float32 "
                             "[sequence, 384], Captum's float64 attributions (x weight_scale) "
                             "cast to float32",
        "sentences": [sentence_record(s) for s in results],
    }
    write_json(os.path.join(OUT, "captum.json"), meta)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"Captum: {captum_s:.0f} s; {rel(OUT)}: {total} bytes in all")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
