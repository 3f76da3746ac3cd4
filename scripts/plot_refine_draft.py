"""Quality vs latency on sentcomp test for the canvas model refining its own
one-pass draft (docs/quality.json key sentcomp_refine_draft: every system,
NAG-BERT and the AR baseline included, timed in that one compare run).

usage: python scripts/plot_refine_draft.py docs/refine_draft_quality_vs_latency.png
"""
import json
import sys

from narlm import plots

task = json.load(open("docs/quality.json", encoding="utf-8"))["tasks"]["sentcomp_refine_draft"]
plots.plot_quality_vs_latency({"tasks": {"sentcomp test, refining the draft (b=1 latency)": task}},
                              sys.argv[1])
