r"""Generation service and demo page: NAG-BERT next to its autoregressive baseline.

Usage:
  python -m narlm.serve --model_dir=/tmp/narlm_quickstart \
      [--ar_model_dir=/tmp/narlm_ar] [--host=127.0.0.1 --port=8080]

Each model directory is a narlm training run: its `config.gin` (the operative
gin config `narlm.train.main` writes) is parsed to build the configured
`MODEL`, and the latest checkpoint is loaded with `narlm.train.restore_params`.
`--model_dir` must hold a `NagBertModel`, `--ar_model_dir` an
`ArSeq2SeqModel`. Every (method, length bucket, batch bucket) program is
compiled by a warm-up before the server accepts connections, so no request
pays for a compile (except a ratio-first alpha not seen before, see below).

HTTP API (JSON in and out; every error is `{"error": "..."}` with a 4xx
status naming the problem; never a traceback):

  POST /api/generate
    {"texts": ["..."], "methods": ["argmax", "viterbi", "ratio_first",
     "ar_greedy"], "alpha": 0.6}
    -> {"results": [{"method": "viterbi", "kind": "NAR", "outputs": ["..."],
        "latency_ms": 12.3}, ...], "total_ms": 40.1}
    `methods` defaults to every method this server offers (ratio_first only
    when there is an alpha). `alpha` (the
    ratio-first output/input length ratio) is needed for ratio_first unless
    the model's config binds RATIO_FIRST_ALPHA; it is rounded to 0.01.
    `latency_ms` is the warm wall time of one batched call for all texts
    (tokenise, pad to the bucket, jitted predict, detokenise); time spent
    waiting for the model lock is not included (it is in `total_ms`).
  GET /api/health  -> status, loaded models, methods, limits.
  GET /            -> the demo page (narlm/static: plain HTML + JS + CSS).

Concurrency: `ThreadingHTTPServer` (a thread per connection); parsing and
validation run in parallel, the model calls are serialised by one lock (the
machine's cores go to one XLA computation at a time and the per-method
timings are not disturbed by other requests). Past `--max_pending` requests
waiting for the lock, the server answers 503 instead of queueing more.

Alpha is a static argument of the jitted prediction (`narlm.predictor.Predictor`),
so each distinct alpha is a separate compiled program: the warm-up compiles
`--alpha` and `--alphas` (a fixed set), and a request for any other value gets
a 400 naming the allowed ones. No client can make the server compile.

It binds to 127.0.0.1 by default; the HTTP layer (`narlm.serve_http`)
checks Host, takes JSON only, refuses bodies on GET, and requires a bearer
token for a non-loopback bind.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Optional, Sequence

from narlm import predictor as predictor_lib
# The one run loader: config.gin builds MODEL, the checkpoint gives the params.
from narlm.run_dirs import LoadedModel, load_model
from narlm.serve_http import RequestError, make_server  # noqa: F401  (re-exported)

logger = logging.getLogger("narlm.serve")

NAR_METHODS = ("argmax", "viterbi", "ratio_first")
# A canvas (iterative refinement) run given as --model_dir serves these
# instead, with the run's ITERATIONS passes (narlm.canvas).
CANVAS_METHODS = ("mask_predict", "mask_predict_crf", "refine_draft", "refine_draft_crf")
DRAFT_METHODS = ("refine_draft", "refine_draft_crf")  # narlm.canvas_draft
AR_METHOD = "ar_greedy"
ALL_METHODS = NAR_METHODS + CANVAS_METHODS + (AR_METHOD,)
REQUEST_FIELDS = ("texts", "methods", "alpha")

# ----------------------------------------------------------------- models


def _nar_has_crf(loaded: LoadedModel) -> bool:
  return bool(getattr(loaded.model.module, "use_crf", False))


def _check_model_kinds(nar: LoadedModel, ar: Optional[LoadedModel]) -> None:
  from narlm import ar_models  # pylint: disable=g-import-not-at-top
  from narlm import canvas  # pylint: disable=g-import-not-at-top
  from narlm import models  # pylint: disable=g-import-not-at-top
  if not isinstance(nar.model, (models.NagBertModel, canvas.CanvasModel)):
    hint = (" (pass an AR run as --ar_model_dir)"
            if isinstance(nar.model, ar_models.ArSeq2SeqModel) else "")
    raise ValueError(f"--model_dir {nar.model_dir} holds a model of class "
                     f"{nar.kind}; expected NagBertModel or CanvasModel{hint}")
  if ar is not None and not isinstance(ar.model, ar_models.ArSeq2SeqModel):
    raise ValueError(f"--ar_model_dir {ar.model_dir} holds a model of class "
                     f"{ar.kind}; expected ArSeq2SeqModel")


# ---------------------------------------------------------------- service
@dataclasses.dataclass(frozen=True)
class Limits:
  max_texts: int = 16
  max_chars: int = 2000
  max_tokens: int = 64
  max_body_bytes: int = 1 << 20
  max_alpha: float = 4.0
  max_pending: int = 64

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if not getattr(self, field.name) > 0:
        raise ValueError(f"{field.name} must be > 0, got {getattr(self, field.name)}")


def _type_name(value: Any) -> str:
  if value is None:
    return "null"
  if isinstance(value, bool):
    return "boolean"
  if isinstance(value, (int, float)):
    return "number"
  return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


class GenerationService:
  """Validates requests and runs the Generators (thread-safe).

  Args:
    nar: the NAG-BERT model (NagBertModel).
    ar: the autoregressive baseline (ArSeq2SeqModel), or None.
    limits: request limits.
    length_buckets / batch_buckets: padding buckets (see narlm.predictor.Predictor);
      both are capped at the limits (max_tokens, max_texts).
    methods: the methods to offer (default: every one the models support).
    alpha: ratio-first alpha compiled at warm-up and shown on the page
      (default: the model's RATIO_FIRST_ALPHA, else 0.6).
    alphas: further ratio-first alphas compiled at warm-up; requests may use
      these and `alpha` only.
  """

  def __init__(self, nar: LoadedModel, ar: Optional[LoadedModel] = None, *,
               limits: Limits = Limits(),
               length_buckets: Sequence[int] = predictor_lib.DEFAULT_LENGTH_BUCKETS,
               batch_buckets: Sequence[int] = (1, 8),
               methods: Optional[Sequence[str]] = None, alpha: Optional[float] = None,
               alphas: Sequence[float] = ()):
    _check_model_kinds(nar, ar)
    self.nar, self.ar, self.limits = nar, ar, limits
    for name, model in (("NAR", nar), ("AR", ar)):
      if model is None:
        continue
      positions = model.model.module.config.max_position_embeddings
      if limits.max_tokens > positions:
        raise ValueError(f"max_tokens {limits.max_tokens} exceeds the {name} model's "
                         f"max_position_embeddings {positions}")
    self.unavailable: dict[str, str] = {}
    run_name = os.path.basename(os.path.normpath(nar.model_dir))
    is_canvas = nar.kind == "CanvasModel"
    for m in (NAR_METHODS if is_canvas else CANVAS_METHODS):
      self.unavailable[m] = (
          f"method '{m}' needs a {'NAG-BERT' if is_canvas else 'canvas (mask-predict)'} run; "
          f"the model in {run_name} is a {nar.kind}")
    crf_methods = (("mask_predict_crf", "refine_draft_crf") if is_canvas
                   else ("viterbi", "ratio_first"))
    if is_canvas and not getattr(nar.model, "draft_weight", 0) > 0:
      for m in DRAFT_METHODS:
        self.unavailable[m] = (f"method '{m}' needs a canvas run trained with a draft "
                               f"(DRAFT_WEIGHT > 0); {run_name} has none")
    if not _nar_has_crf(nar):
      for m in crf_methods:
        self.unavailable[m] = (f"method '{m}' needs a CRF; the NAR model in {run_name} "
                               "has none (USE_CRF = False)")
    if ar is None:
      self.unavailable[AR_METHOD] = (f"method '{AR_METHOD}' needs an autoregressive model: "
                                     "start the server with --ar_model_dir")
    if methods is not None:
      for m in methods:
        if m not in ALL_METHODS:
          raise ValueError(f"unknown method {m!r}; known: {', '.join(ALL_METHODS)}")
        if m in self.unavailable:
          raise ValueError(self.unavailable[m])
      for m in ALL_METHODS:
        if m not in methods and m not in self.unavailable:
          self.unavailable[m] = f"method '{m}' is disabled on this server (--methods)"
    self.methods = tuple(m for m in ALL_METHODS if m not in self.unavailable)
    if not self.methods:
      raise ValueError("no method left to serve")

    # The run's RATIO_FIRST_ALPHA: used when a ratio_first request gives none.
    self.model_alpha = getattr(nar.model, "ratio_first_alpha", None)
    if self.model_alpha is not None:
      self.model_alpha = self._check_alpha(self.model_alpha, "RATIO_FIRST_ALPHA")
    default_alpha = alpha if alpha is not None else (self.model_alpha or 0.6)
    self.default_alpha = self._check_alpha(default_alpha, "--alpha")
    self.alphas = tuple(sorted({self.default_alpha}
                               | {self._check_alpha(a, "--alphas") for a in alphas}))

    length_buckets = tuple(sorted(set(length_buckets)))
    batch_buckets = tuple(b for b in sorted(set(batch_buckets)) if b < limits.max_texts)
    self.batch_buckets = batch_buckets + (limits.max_texts,)
    gen_kwargs = dict(max_length=limits.max_tokens, length_buckets=length_buckets,
                      batch_buckets=self.batch_buckets)
    self.nar_generator = predictor_lib.Predictor(nar.model, nar.params, **gen_kwargs)
    self.ar_generator = (predictor_lib.Predictor(ar.model, ar.params, **gen_kwargs)
                         if ar is not None else None)
    self.length_buckets = self.nar_generator.length_buckets

    self._model_lock = threading.Lock()
    self._state_lock = threading.Lock()
    self._pending = 0
    self.warm = False

  # -------------------------------------------------------------- helpers
  def _check_alpha(self, alpha: Any, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
      raise RequestError(400, f"'{name}' must be a number, got {_type_name(alpha)}")
    if not math.isfinite(alpha) or not 0 < alpha <= self.limits.max_alpha:
      raise RequestError(400, f"'{name}' must be in (0, {self.limits.max_alpha}], got {alpha}")
    rounded = round(float(alpha), 2)
    if rounded <= 0:
      raise RequestError(400, f"'{name}' must be at least 0.01 (it is rounded to 0.01), "
                         f"got {alpha}")
    return rounded

  def _generator(self, method: str):
    return self.ar_generator if method == AR_METHOD else self.nar_generator

  def _decode_args(self, method: str, alpha: Optional[float]) -> dict[str, Any]:
    """The Predictor's (predict_batch_with_aux's) arguments of a served method."""
    if method == AR_METHOD:
      return {"decode_method": "greedy"}
    if method == "ratio_first":
      return {"decode_method": method, "alpha": alpha}
    return {"decode_method": method}

  def compiled_programs(self) -> Optional[int]:
    """Number of compiled prediction programs (None if JAX does not say)."""
    total = 0
    for gen in (self.nar_generator, self.ar_generator):
      count = 0 if gen is None else gen.compiled_programs()
      if count is None:
        return None
      total += count
    return total

  def health(self) -> dict[str, Any]:
    def describe(loaded: Optional[LoadedModel]):
      if loaded is None:
        return None
      config = loaded.model.module.config
      # The run's name only: no absolute path leaves the server.
      info = {"model_dir": os.path.basename(os.path.normpath(loaded.model_dir)),
              "class": loaded.kind,
              "hidden_size": config.hidden_size, "num_layers": config.num_layers,
              "vocab_size": config.vocab_size}
      if hasattr(loaded.model.module, "use_crf"):
        info["use_crf"] = _nar_has_crf(loaded)
      if hasattr(loaded.model.module, "decoder_layers"):
        info["decoder_layers"] = loaded.model.module.decoder_layers
      return info

    return {
        "status": "ok" if self.warm else "warming_up",
        "models": {"nar": describe(self.nar), "ar": describe(self.ar)},
        "methods": list(self.methods),
        "unavailable": self.unavailable,
        "kinds": {m: ("AR" if m == AR_METHOD else "NAR") for m in ALL_METHODS},
        "default_alpha": self.default_alpha,
        "alphas": list(self.alphas),
        "model_alpha": self.model_alpha,
        "limits": dataclasses.asdict(self.limits),
        "length_buckets": list(self.length_buckets),
        "batch_buckets": list(self.batch_buckets),
    }

  # --------------------------------------------------------------- warm-up
  def _warmup_text(self, vocab, tokens: int) -> str:
    """A text of (close to) `tokens` tokens: repeated 'a'."""
    k = tokens
    while k > 1 and len(vocab.encode(" ".join(["a"] * k))) > tokens:
      k -= 1
    return " ".join(["a"] * k)

  def warm_up(self, workers: int = 1) -> float:
    """Compiles every program a request can reach: (method, length bucket,
    batch bucket), and for ratio-first each alpha of the fixed set; seconds."""
    jobs = []
    for method in self.methods:
      gen = self._generator(method)
      for alpha in (self.alphas if method == "ratio_first" else (None,)):
        for length in self.length_buckets:
          text = self._warmup_text(gen.vocab, length)
          for rows in self.batch_buckets:
            jobs.append((method, gen, [text] * rows, alpha))
    t0 = time.perf_counter()

    def run(job):
      method, gen, texts, alpha = job
      t = time.perf_counter()
      gen.generate(texts, **self._decode_args(method, alpha))
      logger.info("warm-up: %s, %d x %d tokens: %.1f s", method, len(texts),
                  len(gen.vocab.encode(texts[0])), time.perf_counter() - t)

    logger.info("warm-up: compiling %d programs with %d worker(s)", len(jobs), workers)
    with self._model_lock:
      if workers <= 1:
        for job in jobs:
          run(job)
      else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
          list(pool.map(run, jobs))
    self.warm = True
    elapsed = time.perf_counter() - t0
    logger.info("warm-up done: %d programs in %.1f s", len(jobs), elapsed)
    return elapsed

  # ------------------------------------------------------------ validation
  def parse_request(self, payload: Any) -> tuple[list[str], list[str], Optional[float]]:
    """Validated (texts, methods, alpha) of a decoded JSON body, or RequestError."""
    limits = self.limits
    if not isinstance(payload, dict):
      raise RequestError(400, "the request body must be a JSON object such as "
                         '{"texts": ["..."], "methods": ["viterbi"]}, got '
                         f"{_type_name(payload)}")
    unknown = sorted(set(payload) - set(REQUEST_FIELDS))
    if unknown:
      raise RequestError(400, f"unknown field(s) {', '.join(repr(k) for k in unknown)}; "
                         f"expected {', '.join(REQUEST_FIELDS)}")
    if "texts" not in payload:
      raise RequestError(400, "missing field 'texts' (a list of input strings)")
    texts = payload["texts"]
    if not isinstance(texts, list):
      raise RequestError(400, f"'texts' must be a list of strings, got {_type_name(texts)}")
    if not texts:
      raise RequestError(400, "'texts' is empty: give at least one input text")
    if len(texts) > limits.max_texts:
      raise RequestError(400, f"too many texts: {len(texts)}, the limit is "
                         f"{limits.max_texts} per request")
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise RequestError(400, f"texts[{i}] must be a string, got {_type_name(text)}")
      if not text.strip():
        raise RequestError(400, f"texts[{i}] is empty or only whitespace")
      if len(text) > limits.max_chars:
        raise RequestError(400, f"texts[{i}] is {len(text)} characters long; the limit is "
                           f"{limits.max_chars}")
      try:
        text.encode("utf-8")
      except UnicodeEncodeError as e:
        raise RequestError(400, f"texts[{i}] is not valid Unicode (unpaired surrogate "
                           f"at position {e.start})") from None

    methods = payload.get("methods")
    if methods is None:
      # Every method; ratio_first only when there is an alpha for it.
      methods = [m for m in self.methods if m != "ratio_first" or
                 payload.get("alpha") is not None or self.model_alpha is not None]
    if not isinstance(methods, list):
      raise RequestError(400, f"'methods' must be a list of strings, got {_type_name(methods)}")
    if not methods:
      raise RequestError(400, f"'methods' is empty; available: {', '.join(self.methods)}")
    seen = set()
    for method in methods:
      if not isinstance(method, str):
        raise RequestError(400, f"'methods' must hold strings, got {_type_name(method)}")
      if method not in ALL_METHODS:
        raise RequestError(400, f"unknown method {method!r}; available: "
                           f"{', '.join(self.methods)}")
      if method in self.unavailable:
        raise RequestError(400, self.unavailable[method])
      if method in seen:
        raise RequestError(400, f"method {method!r} is listed twice")
      seen.add(method)

    alpha = payload.get("alpha")
    if alpha is not None:
      alpha = self._check_alpha(alpha)
    if "ratio_first" in methods:
      if alpha is None:
        alpha = self.model_alpha
      if alpha is None:
        raise RequestError(400, "method 'ratio_first' needs 'alpha' (the output/input length "
                           f"ratio, e.g. {self.default_alpha})")
    else:
      alpha = None

    # Token limits last: tokenising is the costliest check.
    vocabs = {}
    if any(m != AR_METHOD for m in methods):
      vocabs["NAR"] = self.nar_generator.vocab
    if AR_METHOD in methods:
      vocabs.setdefault("AR", self.ar_generator.vocab)
    for i, text in enumerate(texts):
      for name, vocab in vocabs.items():
        if name == "AR" and vocab is vocabs.get("NAR"):
          continue
        n = len(vocab.encode(text))
        if n == 0:
          raise RequestError(400, f"texts[{i}] has no tokens (only control characters?)")
        if n > limits.max_tokens:
          raise RequestError(400, f"texts[{i}] is {n} tokens long; the limit is "
                             f"{limits.max_tokens} tokens")
    return texts, methods, alpha

  def _admit_alpha(self, alpha: float) -> None:
    if alpha not in self.alphas:
      raise RequestError(400, f"alpha {alpha} is not one of this server's compiled alpha "
                         f"values: {', '.join(str(a) for a in self.alphas)} (the server "
                         "compiles a fixed set at start-up: --alpha, --alphas)")

  # ------------------------------------------------------------ generation
  def generate(self, payload: Any) -> dict[str, Any]:
    """Validates a decoded JSON request and runs every method on all texts."""
    t0 = time.perf_counter()
    texts, methods, alpha = self.parse_request(payload)
    if alpha is not None:
      self._admit_alpha(alpha)
    with self._state_lock:
      if self._pending >= self.limits.max_pending:
        raise RequestError(503, f"server busy: {self._pending} requests are waiting; "
                           "retry later", {"Retry-After": "1"})
      self._pending += 1
    try:
      results = []
      for method in methods:
        gen = self._generator(method)
        with self._model_lock:
          t = time.perf_counter()
          outputs = gen.generate(texts, **self._decode_args(method, alpha))
          latency = time.perf_counter() - t
        result = {"method": method, "kind": "AR" if method == AR_METHOD else "NAR",
                  "outputs": outputs, "latency_ms": round(latency * 1e3, 3)}
        if method == "ratio_first":
          result["alpha"] = alpha
        results.append(result)
    finally:
      with self._state_lock:
        self._pending -= 1
    return {"results": results, "total_ms": round((time.perf_counter() - t0) * 1e3, 3)}


# -------------------------------------------------------------------- CLI
def _int_list(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  if not values or any(v < 1 for v in values):
    raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
  return values


def _float_list(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise ValueError(f"--alphas: expected comma-separated numbers, got {text!r}") from None


def _method_list(text: str) -> tuple[str, ...]:
  values = tuple(v.strip() for v in text.split(",") if v.strip())
  for v in values:
    if v not in ALL_METHODS:
      raise argparse.ArgumentTypeError(f"unknown method {v!r}; known: {', '.join(ALL_METHODS)}")
  return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m narlm.serve", description=__doc__.split("\n")[0])
  p.add_argument("--model_dir", required=True,
                 help="NAG-BERT training run (config.gin + checkpoints/)")
  p.add_argument("--ar_model_dir", default=None, help="autoregressive baseline run (optional)")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to bind (default 127.0.0.1; any other address needs --token)")
  p.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")
  p.add_argument("--allowed_hosts", default="",
                 help="comma-separated extra host names accepted in the Host header (the "
                 "bind address and, on loopback, localhost are always accepted)")
  p.add_argument("--token", default=os.environ.get("NARLM_SERVE_TOKEN"),
                 help="bearer token required on /api/ (default: $NARLM_SERVE_TOKEN); "
                 "required for a non-loopback --host")
  p.add_argument("--insecure_no_token", action="store_true",
                 help="allow a non-loopback --host without --token")
  p.add_argument("--methods", type=_method_list, default=None,
                 help=f"comma-separated methods to offer (default: all of {','.join(ALL_METHODS)} "
                 "the models support)")
  p.add_argument("--alpha", type=float, default=None,
                 help="ratio-first alpha compiled at start-up and pre-filled on the page "
                 "(default: the model's RATIO_FIRST_ALPHA, else 0.6)")
  p.add_argument("--max_texts", type=int, default=16, help="texts per request")
  p.add_argument("--max_chars", type=int, default=2000, help="characters per text")
  p.add_argument("--max_tokens", type=int, default=None,
                 help="tokens per text (default: the run's TASK_FEATURE_LENGTHS['inputs'], "
                 "else 128)")
  p.add_argument("--max_body_bytes", type=int, default=1 << 20, help="request body size")
  p.add_argument("--max_alpha", type=float, default=4.0, help="largest accepted alpha")
  p.add_argument("--alphas", default="",
                 help="comma-separated further ratio-first alphas compiled at start-up "
                 "(requests may use --alpha and these only)")
  p.add_argument("--max_pending", type=int, default=64,
                 help="requests waiting for the model before the server answers 503")
  p.add_argument("--length_buckets", type=_int_list,
                 default=predictor_lib.DEFAULT_LENGTH_BUCKETS,
                 help="comma-separated token-length buckets (capped at max_tokens)")
  p.add_argument("--batch_buckets", type=_int_list, default=(1, 8),
                 help="comma-separated batch buckets (capped at max_texts)")
  p.add_argument("--warmup_workers", type=int, default=1,
                 help="threads compiling the warm-up programs (on 2 cores, 2 threads were "
                 "no faster than 1)")
  p.add_argument("--compilation_cache_dir", default=None,
                 help="JAX persistent compilation cache: a restarted server loads the "
                 "warm-up programs from here instead of compiling them")
  p.add_argument("--no_warmup", action="store_true",
                 help="skip the warm-up (the first request of each shape compiles)")
  return p.parse_args(list(argv))


def build_service(args: argparse.Namespace) -> GenerationService:
  """Loads the models named by `args` and builds (and warms up) the service."""
  if args.compilation_cache_dir:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache_dir)
  nar = load_model(args.model_dir)
  ar = load_model(args.ar_model_dir) if args.ar_model_dir else None
  max_tokens = args.max_tokens
  if max_tokens is None:
    max_tokens = nar.input_length or 128
  limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_tokens=max_tokens,
                  max_body_bytes=args.max_body_bytes, max_alpha=args.max_alpha,
                  max_pending=args.max_pending)
  try:
    service = GenerationService(nar, ar, limits=limits, length_buckets=args.length_buckets,
                                batch_buckets=args.batch_buckets, methods=args.methods,
                                alpha=args.alpha, alphas=_float_list(args.alphas))
  except RequestError as e:  # a bad --alpha
    raise ValueError(e.message) from None
  if not args.no_warmup:
    service.warm_up(max(1, args.warmup_workers))
  else:
    service.warm = True
  return service


def main(argv: Sequence[str]) -> None:
  args = parse_args(argv)
  from narlm import serve_http  # pylint: disable=g-import-not-at-top
  if not serve_http.is_loopback(args.host) and args.token is None and not args.insecure_no_token:
    raise ValueError(f"--host {args.host} is reachable from other machines: give --token (or "
                     "$NARLM_SERVE_TOKEN) so that only clients holding it can use the API, or "
                     "--insecure_no_token to serve without one")
  service = build_service(args)
  from narlm import serve_http  # pylint: disable=g-import-not-at-top
  server = make_server(service, args.host, args.port,
                       allowed_hosts=[h for h in args.allowed_hosts.split(",") if h.strip()],
                       token=args.token)
  if not serve_http.is_loopback(args.host) and args.token is None:
    logger.warning("listening on %s without a bearer token (--insecure_no_token)", args.host)

  def on_sigterm(signum, frame):  # pylint: disable=unused-argument
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, on_sigterm)
  # Tests and scripts read this line to find the port.
  print(f"narlm.serve listening on {server.url}", flush=True)
  logger.info("methods: %s; limits: %s", ", ".join(service.methods), service.limits)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    logger.info("shutting down")
  finally:
    server.server_close()


def console_main() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  # orbax logs every restore step at INFO through absl.
  logging.getLogger("absl").setLevel(logging.WARNING)
  # The entry points' error contract (narlm.cli_errors): a user error (bad
  # flag, missing or damaged run, port in use) is one message and exit 2.
  from narlm import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError, OSError, checkpoints.CheckpointError) as e:
    logger.error("%s", e)
    logger.debug("traceback", exc_info=True)
    sys.exit(2)


if __name__ == "__main__":
  console_main()
