#!/usr/bin/env python3
"""Make docs/images/chelsea-techniques.png: the cat photo's maps by IG, SmoothGrad (over IG),
Blur IG, Guided IG and XRAI side by side, each with its faithfulness metrics, as
`integrad explain` and `integrad evaluate` write them; and print the metrics as a Markdown
table for the README and docs/techniques.md.

Every technique runs with its defaults (PAIR's); SmoothGrad is IG with `--smooth-samples 10`.
The metrics use one random mask (seed 0) for all maps, and `--min-pred-value 0` because the
demo model gives the cat's top class p = 0.38, below PAIR's default cut-off of 0.8.

Run from the repository root after `cargo build --release`, with the dev virtualenv (Pillow):
    .venv-dev/bin/python scripts/make_technique_gallery.py
"""

import json
import os
import subprocess
import sys
import tempfile

from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO, "target", "release", "integrad")
PHOTO = os.path.join(REPO, "samples", "chelsea.png")
OUT = os.path.join(REPO, "docs", "images", "chelsea-techniques.png")

TECHNIQUES = [
    ("IG", ["--technique", "ig"]),
    ("SmoothGrad (IG, 10 samples)", ["--technique", "ig", "--smooth-samples", "10"]),
    ("Blur IG", ["--technique", "blur-ig"]),
    ("Guided IG", ["--technique", "guided-ig"]),
    ("XRAI (top 30 %)", ["--technique", "xrai"]),
]
METRICS = ["deletion", "insertion", "sic", "aic"]


def run(args):
    done = subprocess.run([BINARY, *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"integrad {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def main():
    rows = []
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in TECHNIQUES:
            out = os.path.join(tmp, name.split()[0].lower())
            run(["explain", PHOTO, "--model", "efficientnet-lite0", *flags, "--out", out])
            explanation = json.load(open(os.path.join(out, "explanation.json")))
            evaluated = os.path.join(out, "evaluation")
            run([
                "evaluate", PHOTO, "--model", "efficientnet-lite0",
                "--saliency", os.path.join(out, "explanation.json"),
                "--min-pred-value", "0", "--seed", "0", "--out", evaluated,
            ])
            evaluation = json.load(open(os.path.join(evaluated, "evaluation.json")))
            areas = {}
            for curve in evaluation["curves"]:
                metric = curve["metric"].removeprefix("METRIC_").lower()
                areas[metric] = curve["auc"]
            rows.append((name, explanation, areas))
            tiles.append(Image.open(os.path.join(out, "overlay.png")).convert("RGB"))

    width = 300
    tiles = [t.resize((width, round(t.height * width / t.width))) for t in tiles]
    height = max(t.height for t in tiles)
    caption = 62
    sheet = Image.new("RGB", (width * len(tiles), height + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, (name, explanation, areas)) in enumerate(zip(tiles, rows)):
        sheet.paste(tile, (i * width, 0))
        text = (
            f"{name}\n"
            f"SIC {areas.get('sic', float('nan')):.3f}  AIC {areas.get('aic', float('nan')):.3f}\n"
            f"deletion {areas.get('deletion', float('nan')):.3f}  "
            f"insertion {areas.get('insertion', float('nan')):.3f}"
        )
        draw.multiline_text((i * width + 6, height + 4), text, fill="black")
    sheet.save(OUT)
    print(f"wrote {os.path.relpath(OUT, REPO)}")
    print()
    print("| technique | gradient evaluations | SIC | AIC | deletion (lower is better) | insertion |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, explanation, areas in rows:
        print(
            f"| {name} | {explanation['evaluations']} | {areas.get('sic', float('nan')):.3f} | "
            f"{areas.get('aic', float('nan')):.3f} | {areas.get('deletion', float('nan')):.3f} | "
            f"{areas.get('insertion', float('nan')):.3f} |"
        )


if __name__ == "__main__":
    main()
