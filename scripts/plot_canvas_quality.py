"""Quality vs latency on sentcomp test: the canvas model with and without the CRF
at T = 1, 2, 4, 10 (docs/quality.json key sentcomp_canvas_crf) beside the
one-pass and AR systems of sentcomp_final (latencies from that compare run)."""
import json, sys
from narlm import plots
tasks = json.load(open("docs/quality.json"))["tasks"]
final, canvas = tasks["sentcomp_final"], tasks["sentcomp_canvas_crf"]
keep = ("ar_prefix_lm", "aligned_crf", "aligned_nar", "tagger", "copy", "lead")
systems = {k: v for k, v in final["systems"].items() if k in keep}
systems.update({f"canvas_{k}": v for k, v in canvas["systems"].items() if "_t" in k})
plots.plot_quality_vs_latency({"tasks": {"sentcomp test (b=1 latency)": {
    "metric": final["metric"], "systems": systems}}}, sys.argv[1])
