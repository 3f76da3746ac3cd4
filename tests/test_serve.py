"""narlm.serve: the generation API, its validation, a load test and the demo page.

The runs are built directly (random parameters of the tiny quickstart model
and of the tiny AR baseline, an orbax checkpoint and the operative
config.gin, as narlm.train leaves them): a real 2-step training run costs
~45 s each on CPU. One server (both models, every method) runs in a thread on
127.0.0.1 with a free port for the whole module; its buckets are kept to one
length x one batch size so the warm-up compiles only 4 programs.

The browser test needs Debian's chromium (`apt-get install -y chromium
chromium-driver`) and Playwright for Python (`pip install playwright`, no
`playwright install`); it is skipped, saying so, when either is missing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import re
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest

from narlm import serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_TEXTS, MAX_TOKENS, MAX_CHARS, MAX_BODY = 4, 16, 200, 4096
SERVER_ARGS = ["--port", "0", "--max_texts", str(MAX_TEXTS), "--max_tokens", str(MAX_TOKENS),
               "--max_chars", str(MAX_CHARS), "--max_body_bytes", str(MAX_BODY),
               "--length_buckets", str(MAX_TOKENS), "--batch_buckets", str(MAX_TEXTS),
               "--alpha", "0.6"]
TEXTS = ["the cat sat on the mat .", "a second , longer input sentence about the weather ."]


# ------------------------------------------------------------------ runs
def make_run(model_dir: str, gin_files, seed: int = 0) -> None:
  """A run directory as narlm.train leaves it: config.gin + checkpoints/<step>."""
  import gin
  import jax
  import orbax.checkpoint as ocp
  from narlm import train

  gin.clear_config()
  try:
    train.parse_gin(gin_files, [f'MODEL_DIR = "{model_dir}"'])
    model = gin.config.ConfigurableReference("MODEL/gin.macro", True).scoped_configurable_fn()
    abstract = jax.eval_shape(
        lambda r: model.get_initial_variables(r, {"encoder_input_tokens": (1, 8)}),
        jax.random.PRNGKey(seed))
    config = gin.operative_config_str()
  finally:
    gin.clear_config()
  # Random values straight from numpy: flax's init runs ~100 tiny XLA
  # compiles (~15 s); the server only needs parameters of the right shapes.
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(
      lambda s: (rng.standard_normal(s.shape) * 0.05).astype(s.dtype), abstract["params"])
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"), options=options) as manager:
    manager.save(2, args=ocp.args.StandardSave({"step": np.int32(2), "params": params}))
  with open(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  del data_dir  # the vocabulary lives there
  root = tmp_path_factory.mktemp("runs")
  nar, ar = str(root / "nar"), str(root / "ar")
  make_run(nar, ["narlm/gin/tiny_cpu.gin"])
  make_run(ar, ["narlm/gin/tiny_cpu.gin", "narlm/gin/models/ar_tiny.gin"])
  return {"nar": nar, "ar": ar}


def start(service):
  server = serve.make_server(service, "127.0.0.1", 0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return server


def stop(server):
  server.shutdown()
  server.server_close()


@pytest.fixture(scope="module")
def service(runs):
  args = serve.parse_args(["--model_dir", runs["nar"], "--ar_model_dir", runs["ar"],
                           *SERVER_ARGS])
  return serve.build_service(args)


@pytest.fixture(scope="module")
def url(service):
  server = start(service)
  yield server.url
  stop(server)


# ---------------------------------------------------------------- client
def request(url, method, path, body=None, headers=None, timeout=60):
  """(status, headers, decoded JSON or text) of one request on a new connection."""
  parts = urllib.parse.urlsplit(url)
  conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
  try:
    if isinstance(body, (dict, list)):
      body = json.dumps(body).encode("utf-8")
    if body is not None and method == "POST":
      headers = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    kind = response.getheader("Content-Type", "")
    payload = json.loads(data) if kind.startswith("application/json") else data.decode("utf-8")
    return response.status, dict(response.getheaders()), payload
  finally:
    conn.close()


def generate(url, payload):
  return request(url, "POST", "/api/generate", payload)


def raw_exchange(url, data: bytes) -> bytes:
  """Sends raw bytes; everything the server sends back until it closes."""
  parts = urllib.parse.urlsplit(url)
  with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
    sock.sendall(data)
    received = b""
    while True:
      chunk = sock.recv(65536)
      if not chunk:
        break
      received += chunk
  return received


def raw_request(url, data: bytes) -> tuple[int, dict]:
  """Sends raw bytes (for requests http.client will not build); status, JSON."""
  received = raw_exchange(url, data)
  head, _, body = received.partition(b"\r\n\r\n")
  status = int(head.split(b" ", 2)[1])
  return status, json.loads(body)


# ------------------------------------------------------------------ API
def test_health_lists_models_methods_and_limits(url, runs):
  status, headers, health = request(url, "GET", "/api/health")
  assert status == 200 and headers["Content-Type"].startswith("application/json")
  assert health["status"] == "ok"
  assert health["methods"] == ["argmax", "viterbi", "ratio_first", "ar_greedy"]
  assert health["models"]["nar"]["class"] == "NagBertModel"
  assert health["models"]["nar"]["use_crf"] is True
  assert health["models"]["ar"]["class"] == "ArSeq2SeqModel"
  # The run's name only: no absolute path leaves the server.
  assert health["models"]["ar"]["model_dir"] == os.path.basename(runs["ar"])
  assert health["alphas"] == [0.6]
  assert health["limits"]["max_texts"] == MAX_TEXTS
  assert health["limits"]["max_tokens"] == MAX_TOKENS
  assert health["default_alpha"] == 0.6


def test_generate_every_method_side_by_side(url, service):
  compiled = service.compiled_programs()
  payload = {"texts": TEXTS, "methods": ["argmax", "viterbi", "ratio_first", "ar_greedy"],
             "alpha": 0.6}
  status, _, body = generate(url, payload)
  assert status == 200, body
  assert [r["method"] for r in body["results"]] == payload["methods"]
  assert [r["kind"] for r in body["results"]] == ["NAR", "NAR", "NAR", "AR"]
  for r in body["results"]:
    assert len(r["outputs"]) == len(TEXTS)
    assert all(isinstance(o, str) for o in r["outputs"])
    assert isinstance(r["latency_ms"], float) and r["latency_ms"] > 0
  assert body["results"][2]["alpha"] == 0.6
  assert body["total_ms"] >= sum(r["latency_ms"] for r in body["results"])
  # The warm-up compiled every program this request needs.
  if compiled is not None:
    assert service.compiled_programs() == compiled
  # Deterministic, and an output does not depend on the other rows of the batch.
  _, _, again = generate(url, payload)
  assert [r["outputs"] for r in again["results"]] == [r["outputs"] for r in body["results"]]
  _, _, alone = generate(url, dict(payload, texts=TEXTS[:1], alpha=0.600001))
  assert [r["outputs"][0] for r in alone["results"]] == \
      [r["outputs"][0] for r in body["results"]]


def test_methods_default_to_all_and_ratio_first_is_bounded_by_alpha(url):
  status, _, body = generate(url, {"texts": TEXTS[1:]})
  assert status == 200, body
  # Without an alpha (the model's config binds none), ratio_first is left out.
  assert [r["method"] for r in body["results"]] == ["argmax", "viterbi", "ar_greedy"]
  status, _, body = generate(url, {"texts": TEXTS[1:], "alpha": 0.6})
  assert status == 200, body
  assert [r["method"] for r in body["results"]] == ["argmax", "viterbi", "ratio_first",
                                                    "ar_greedy"]
  # ratio-first decodes at most min(n, floor(alpha * n) + 2) positions, with
  # n = WordPieces + [CLS] + [SEP] (the last decoded position is an eos).
  outputs = {r["method"]: r["outputs"][0] for r in body["results"]}
  from narlm import decoding, vocabularies
  vocab = vocabularies.get_vocabulary("bert_uncased")
  n = len(vocab.encode(TEXTS[1])) + 2
  assert len(vocab.encode(outputs["ratio_first"])) <= decoding.ratio_first_window(n, 0.6)


BAD_REQUESTS = [
    # (id, body (bytes or JSON), expected status, words the error must contain)
    ("malformed_json", b'{"texts": ["a"', 400, "malformed JSON"),
    ("nan", b'{"texts": ["a"], "alpha": NaN}', 400, "NaN is not valid JSON"),
    ("empty_body", b"", 400, "empty request body"),
    ("not_an_object", ["a"], 400, "must be a JSON object"),
    ("unknown_field", {"text": ["a"]}, 400, "unknown field(s) 'text'"),
    ("missing_texts", {"methods": ["argmax"]}, 400, "missing field 'texts'"),
    ("texts_not_a_list", {"texts": "a b c"}, 400, "'texts' must be a list of strings"),
    ("empty_texts", {"texts": []}, 400, "'texts' is empty"),
    ("empty_text", {"texts": ["ok", ""]}, 400, "texts[1] is empty or only whitespace"),
    ("whitespace_text", {"texts": [" \n\t "]}, 400, "texts[0] is empty or only whitespace"),
    ("text_not_a_string", {"texts": ["ok", 3]}, 400, "texts[1] must be a string, got number"),
    ("too_many_texts", {"texts": ["a"] * (MAX_TEXTS + 1)}, 400,
     f"too many texts: {MAX_TEXTS + 1}, the limit is {MAX_TEXTS}"),
    ("too_many_chars", {"texts": ["a" * (MAX_CHARS + 1)]}, 400,
     f"texts[0] is {MAX_CHARS + 1} characters long; the limit is {MAX_CHARS}"),
    ("too_many_tokens", {"texts": ["ok", "word " * (MAX_TOKENS + 4)]}, 400,
     f"texts[1] is {MAX_TOKENS + 4} tokens long; the limit is {MAX_TOKENS} tokens"),
    ("no_tokens", {"texts": ["\u0000\u0001"]}, 400, "texts[0] has no tokens"),
    ("lone_surrogate", b'{"texts": ["ab\\ud800"]}', 400, "texts[0] is not valid Unicode"),
    ("non_utf8", b'{"texts": ["caf\xe9"]}', 400, "not valid UTF-8 (byte 0xe9 at offset 15)"),
    ("unknown_method", {"texts": ["a"], "methods": ["beam"]}, 400, "unknown method 'beam'"),
    ("methods_not_a_list", {"texts": ["a"], "methods": "argmax"}, 400,
     "'methods' must be a list of strings"),
    ("empty_methods", {"texts": ["a"], "methods": []}, 400, "'methods' is empty"),
    ("duplicate_method", {"texts": ["a"], "methods": ["argmax", "argmax"]}, 400,
     "method 'argmax' is listed twice"),
    ("ratio_first_without_alpha", {"texts": ["a"], "methods": ["ratio_first"]}, 400,
     "method 'ratio_first' needs 'alpha'"),
    ("alpha_string", {"texts": ["a"], "methods": ["ratio_first"], "alpha": "0.6"}, 400,
     "'alpha' must be a number, got string"),
    ("alpha_bool", {"texts": ["a"], "methods": ["ratio_first"], "alpha": True}, 400,
     "'alpha' must be a number, got boolean"),
    ("alpha_negative", {"texts": ["a"], "methods": ["ratio_first"], "alpha": -1}, 400,
     "'alpha' must be in (0, 4.0]"),
    ("alpha_tiny", {"texts": ["a"], "methods": ["ratio_first"], "alpha": 0.001}, 400,
     "at least 0.01"),
    # Only the compiled alphas (--alpha 0.6, no --alphas) may be used.
    ("alpha_not_compiled", {"texts": ["a"], "methods": ["ratio_first"], "alpha": 0.5}, 400,
     "alpha 0.5 is not one of this server's compiled alpha values: 0.6"),
    ("oversize_body", {"texts": ["a" * MAX_BODY]}, 413,
     f"request body is {len(json.dumps({'texts': ['a' * MAX_BODY]}))} bytes; the limit is "
     f"{MAX_BODY}"),
]


@pytest.mark.parametrize("body,status,words", [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_json_error_naming_the_problem(url, body, status, words):
  got, headers, reply = generate(url, body)
  assert got == status, reply
  assert headers["Content-Type"].startswith("application/json")
  assert set(reply) == {"error"} and words in reply["error"], reply


POST_HEAD = b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def test_http_level_errors_are_json(url):
  status, _, reply = request(url, "GET", "/api/nothing")
  assert status == 404 and reply == {"error": "no such path: /api/nothing"}
  status, headers, reply = request(url, "GET", "/api/generate")
  assert status == 405 and headers["Allow"] == "POST" and "use POST" in reply["error"]
  status, headers, reply = request(url, "POST", "/", b"{}")
  assert status == 405 and headers["Allow"] == "GET"
  status, _, reply = request(url, "BREW", "/api/health")
  assert status == 501 and "BREW" in reply["error"]
  status, reply = raw_request(url, POST_HEAD +
                              b"Connection: close\r\n\r\n")
  assert status == 411 and "Content-Length" in reply["error"]
  status, reply = raw_request(url, POST_HEAD +
                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
  assert status == 411 and "chunked" in reply["error"]
  status, reply = raw_request(url, POST_HEAD +
                              b"Content-Length: 99999999999\r\n\r\n")
  assert status == 413
  status, reply = raw_request(url, b"GET /api/health HTTP/1.1\r\n"
                              + b"".join(b"X-%d: y\r\n" % i for i in range(120)) + b"\r\n")
  assert status == 431 and reply == {"error": "Too many headers"}
  # The server is still fine.
  assert generate(url, {"texts": ["a"], "methods": ["argmax"]})[0] == 200


def test_without_an_ar_model_ar_greedy_is_a_400(service):
  nar_only = serve.GenerationService(service.nar, None, limits=service.limits,
                                     length_buckets=service.length_buckets,
                                     batch_buckets=service.batch_buckets)
  server = start(nar_only)
  try:
    status, _, reply = generate(server.url, {"texts": ["a"], "methods": ["ar_greedy"]})
    assert status == 400
    assert reply["error"] == ("method 'ar_greedy' needs an autoregressive model: start the "
                              "server with --ar_model_dir")
    _, _, health = request(server.url, "GET", "/api/health")
    assert health["methods"] == ["argmax", "viterbi", "ratio_first"]
    assert health["models"]["ar"] is None and "ar_greedy" in health["unavailable"]
  finally:
    stop(server)


def test_requests_past_max_pending_get_503(service):
  limits = dataclasses.replace(service.limits, max_pending=1)
  busy = serve.GenerationService(service.nar, None, limits=limits,
                                 length_buckets=service.length_buckets,
                                 batch_buckets=service.batch_buckets)
  release, entered = threading.Event(), threading.Event()

  class Blocking:
    vocab = busy.nar_generator.vocab

    def generate(self, texts, **decode_kwargs):
      entered.set()
      release.wait(30)
      return ["x"] * len(texts)

  busy.nar_generator = Blocking()
  server = start(busy)
  try:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      first = pool.submit(generate, server.url, {"texts": ["a"], "methods": ["argmax"]})
      assert entered.wait(30)
      status, headers, reply = generate(server.url, {"texts": ["b"], "methods": ["argmax"]})
      assert status == 503 and headers["Retry-After"] == "1" and "busy" in reply["error"]
      release.set()
      assert first.result()[0] == 200
  finally:
    release.set()
    stop(server)


def test_bad_model_dirs_fail_with_clear_errors(tmp_path, runs, service):
  with pytest.raises(FileNotFoundError, match="config.gin not found"):
    serve.load_model(str(tmp_path))
  (tmp_path / "config.gin").write_text("MODEL_DIR = 'x'\n")
  with pytest.raises(ValueError, match="defines no MODEL macro"):
    serve.load_model(str(tmp_path))
  with pytest.raises(ValueError, match="holds a model of class ArSeq2SeqModel; expected NagBertModel"):
    serve.GenerationService(service.ar, None)
  with pytest.raises(ValueError, match="method 'ar_greedy' needs an autoregressive model"):
    serve.GenerationService(service.nar, None, methods=["argmax", "ar_greedy"])


# ------------------------------------------------------------------ page
def test_page_and_static_files_are_served_without_external_references(url):
  status, headers, page = request(url, "GET", "/")
  assert status == 200 and headers["Content-Type"].startswith("text/html")
  assert "default-src 'none'" in headers["Content-Security-Policy"]
  for needle in ('<textarea id="texts"', '<button id="generate"', '<table id="results"',
                 'src="/static/app.js"', 'href="/static/style.css"'):
    assert needle in page
  for path in ("/static/app.js", "/static/style.css"):
    status, _, text = request(url, "GET", path)
    assert status == 200 and ("/api/generate" in text or path.endswith(".css"))
  static = os.path.join(REPO, "narlm", "static")
  for name in os.listdir(static):
    with open(os.path.join(static, name), encoding="utf-8") as f:
      text = f.read()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
  assert request(url, "GET", "/static/../serve.py")[0] == 404
  assert request(url, "GET", "/favicon.ico")[0] == 204


# ------------------------------------------------------------------ load
INVALID = [({"texts": ["a"], "methods": ["ratio_first"], "alpha": 0.61}, 400),  # not compiled
           ({"texts": []}, 400), ({"texts": ["a"], "methods": ["nope"]}, 400),
           ({"texts": ["x " * 500]}, 400)]


def test_load_200_requests_8_concurrent(url, service):
  """Valid and invalid requests mixed: 0 server errors, every invalid one a
  4xx, outputs identical to one-at-a-time, and no compile during the test."""
  methods = ["argmax", "viterbi", "ratio_first", "ar_greedy"]
  texts = TEXTS + ["short one .", "another input to compress , with commas ."]
  requests = [INVALID[(i // 5) % len(INVALID)][0] if i % 5 == 4 else
              {"texts": [texts[i % len(texts)], texts[(i + 1) % len(texts)]][: 1 + i % 2],
               "methods": [methods[i % len(methods)]], "alpha": 0.6} for i in range(200)]
  invalid = {json.dumps(bad, sort_keys=True): status for bad, status in INVALID}
  # The expected outputs, one request at a time.
  expected = {}
  for text in texts:
    _, _, body = generate(url, {"texts": [text], "methods": methods, "alpha": 0.6})
    for r in body["results"]:
      expected[(text, r["method"])] = r["outputs"][0]

  def one(payload):
    t = time.perf_counter()
    status, _, body = generate(url, payload)
    return payload, status, body, time.perf_counter() - t

  compiled_before = service.compiled_programs()
  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    done = list(pool.map(one, requests))
  wall = time.perf_counter() - t0
  compiles = service.compiled_programs() - compiled_before
  refused = [(p, s, b) for p, s, b, _ in done if json.dumps(p, sort_keys=True) in invalid]
  assert len(refused) == 40
  for payload, status, body in refused:
    assert status == invalid[json.dumps(payload, sort_keys=True)] and "error" in body
  done = [d for d in done if json.dumps(d[0], sort_keys=True) not in invalid]
  errors = [(s, b) for _, s, b, _ in done if s != 200]
  latencies = sorted(d for *_, d in done)
  p50 = statistics.median(latencies) * 1e3
  p99 = latencies[min(len(latencies) - 1, int(round(0.99 * len(latencies))) - 1)] * 1e3
  model_ms = statistics.median(b["results"][0]["latency_ms"] for _, s, b, _ in done if s == 200)
  print(f"\nload test: {len(done) + len(refused)} requests, 8 concurrent, {wall:.1f} s "
        f"({(len(done) + len(refused)) / wall:.1f} req/s); valid requests: client latency "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"median model latency {model_ms:.1f} ms; errors {len(errors)}; "
        f"{len(refused)} invalid requests refused with 4xx; compiles {compiles}")
  assert not errors, errors[:3]
  assert compiles == 0
  # No cross-talk between concurrent requests.
  for payload, _, body, _ in done:
    result = body["results"][0]
    assert result["outputs"] == [expected[(t, result["method"])] for t in payload["texts"]]


# --------------------------------------------------------------- browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.browser
def test_demo_page_in_chromium(url, tmp_path):
  if not os.path.exists(CHROMIUM):
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium chromium-driver)")
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    pytest.skip("Playwright for Python is not installed (pip install playwright)")
  host = urllib.parse.urlsplit(url).hostname
  outside, problems = [], []
  screenshot = tmp_path / "demo.png"
  with sync_playwright() as p:
    context = p.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run"],
        viewport={"width": 1200, "height": 800})
    try:
      # Nothing may leave the loopback interface.
      def guard(route):
        if urllib.parse.urlsplit(route.request.url).hostname != host:
          outside.append(route.request.url)
          return route.abort()
        return route.continue_()

      context.route("**/*", guard)
      page = context.pages[0] if context.pages else context.new_page()
      page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
      page.on("pageerror", lambda e: problems.append(str(e)))
      page.goto(url + "/")
      page.wait_for_selector("#method-ar_greedy:checked", timeout=15000)
      page.fill("#texts", TEXTS[0] + "\n\n" + TEXTS[1])
      page.click("#generate")
      page.wait_for_selector('#results tbody tr[data-method="ar_greedy"]', timeout=30000)
      rows = page.query_selector_all("#results tbody tr")
      assert len(rows) == 2 * 4  # two inputs x four methods
      seen = {}
      for row in rows:
        method, kind = row.get_attribute("data-method"), row.get_attribute("data-kind")
        latency = row.query_selector("td.latency").inner_text()
        assert float(latency) > 0, latency
        seen[method] = kind
      assert seen == {"argmax": "NAR", "viterbi": "NAR", "ratio_first": "NAR",
                      "ar_greedy": "AR"}
      assert "Speed-up over AR greedy" in page.inner_text("#speedup")
      assert page.is_hidden("#error")
      # A server-side error reaches the page: alpha 0.5 was never compiled.
      page.fill("#alpha", "0.5")
      page.click("#generate")
      page.wait_for_selector("#error:not([hidden])", timeout=15000)
      assert "alpha 0.5 is not one of this server's compiled alpha values: 0.6" in page.inner_text("#error")
      page.fill("#alpha", "0.6")
      page.click("#generate")
      # (A selector, not wait_for_function: the page's CSP forbids eval.)
      page.wait_for_selector("#status:has-text('round trip')", timeout=30000)
      assert page.is_hidden("#error")
      page.screenshot(path=str(screenshot), full_page=True)
    finally:
      context.close()
  print(f"\nscreenshot: {screenshot}")
  assert screenshot.stat().st_size > 10000
  assert not outside, outside
  # The 400 above is logged by Chromium as a failed resource load; nothing else.
  assert all("400" in m for m in problems), problems


# ------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_serves_and_stops_on_sigterm(runs, tmp_path):
  """`python -m narlm.serve` end to end (own process: ~15 s of imports + compile)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
  bad = subprocess.run([sys.executable, "-m", "narlm.serve", "--model_dir", "/nonexistent"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
  assert bad.returncode == 2 and "config.gin not found" in bad.stderr, bad.stderr[-2000:]
  log = tmp_path / "serve.log"
  with open(log, "w") as stderr:
    proc = subprocess.Popen(
        [sys.executable, "-m", "narlm.serve", "--model_dir", runs["nar"], "--port", "0",
         "--methods", "argmax", "--max_texts", "1", "--batch_buckets", "1",
         "--max_tokens", "16"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=REPO)
  try:
    line = proc.stdout.readline()  # after the warm-up
    if not line.startswith("narlm.serve listening on http://127.0.0.1:"):
      proc.kill()
      pytest.fail(f"no 'listening' line, got {line!r}; log:\n{log.read_text()[-3000:]}")
    url = line.split()[-1]
    assert request(url, "GET", "/api/health")[2]["methods"] == ["argmax"]
    status, _, body = generate(url, {"texts": ["hello world"]})
    assert status == 200 and len(body["results"][0]["outputs"]) == 1
    status, _, body = generate(url, {"texts": ["hello"], "methods": ["viterbi"]})
    assert status == 400 and "disabled on this server" in body["error"]
    proc.terminate()
    assert proc.wait(30) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


@pytest.mark.slow
def test_cli_serves_past_a_damaged_newest_checkpoint(runs, tmp_path):
  """The reliability probe's server trial: garbage in every data file of the
  newest step. `python -m narlm.serve` starts anyway on the newest intact
  step (a warning names both), and serves."""
  import shutil
  import orbax.checkpoint as ocp
  from narlm import train
  run = tmp_path / "run"
  shutil.copytree(runs["nar"], run)
  params = train.restore_params(str(run), step=2)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(run / "checkpoints", options=options) as manager:
    manager.save(3, args=ocp.args.StandardSave({"step": np.int32(3), "params": params}))
  rng = np.random.default_rng(0)
  damaged = [p for p in (run / "checkpoints" / "3").rglob("*")
             if p.is_file() and p.parent.name == "d"]
  assert damaged
  for path in damaged:
    size = path.stat().st_size
    with open(path, "r+b") as f:
      f.seek(size // 3)
      f.write(rng.integers(0, 256, min(4096, size - size // 3), dtype=np.uint8).tobytes())
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
  log = tmp_path / "serve.log"
  with open(log, "w") as stderr:
    proc = subprocess.Popen(
        [sys.executable, "-m", "narlm.serve", "--model_dir", str(run), "--port", "0",
         "--methods", "argmax", "--max_texts", "1", "--batch_buckets", "1",
         "--max_tokens", "16"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=REPO)
  try:
    line = proc.stdout.readline()
    if not line.startswith("narlm.serve listening on http://127.0.0.1:"):
      proc.kill()
      pytest.fail(f"no 'listening' line, got {line!r}; log:\n{log.read_text()[-3000:]}")
    status, _, body = generate(line.split()[-1], {"texts": ["hello world"]})
    assert status == 200 and len(body["results"][0]["outputs"]) == 1
    proc.terminate()
    assert proc.wait(30) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  text = log.read_text()
  # A warning, not a crash. orbax/tensorstore may also log the damaged step's
  # read error from a background asyncio task (about 1 run in 5: a traceback
  # ending in a read error of checkpoints/3); any other traceback fails.
  errors = re.findall(r"Traceback \(most recent call last\):.*?\n(\w+Error: [^\n]*)", text,
                      flags=re.S)
  assert text.count("Traceback") == len(errors), text[-3000:]
  assert all("/checkpoints/3/" in e for e in errors), text[-3000:]
  assert "skipping damaged checkpoint step 3" in text and "using checkpoint step 2" in text, \
      text[-3000:]


# ------------------------------------------------------------- safety
def test_foreign_host_headers_are_refused(url):
  """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own
  host name; it gets 403 and no model output."""
  port = urllib.parse.urlsplit(url).port
  for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
    status, _, reply = request(url, "GET", "/api/health", headers={"Host": host})
    assert status == 403 and "is not this server" in reply["error"], (host, reply)
    status, _, reply = generate_with(url, {"texts": ["a"]}, {"Host": host})
    assert status == 403
  for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
    assert request(url, "GET", "/api/health", headers={"Host": host})[0] == 200, host


def generate_with(url, payload, headers):
  return request(url, "POST", "/api/generate", json.dumps(payload).encode(), headers=headers)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_cross_origin_simple_requests_cannot_generate(url, content_type):
  """A page on any origin may POST these content types without a CORS
  preflight; the API takes application/json only (415)."""
  headers = {"Content-Type": content_type, "Origin": "https://evil.example"}
  status, _, reply = generate_with(url, {"texts": ["a"], "methods": ["argmax"]}, headers)
  assert status == 415 and "Content-Type must be application/json" in reply["error"]
  status, _, _ = generate_with(url, {"texts": ["a"], "methods": ["argmax"]},
                               {"Content-Type": "application/json; charset=utf-8"})
  assert status == 200


def test_a_get_with_a_body_is_refused_not_run_as_a_second_request(url):
  smuggled = (b'POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: '
              b'application/json\r\nContent-Length: 13\r\n\r\n{"texts":[1]}')
  data = raw_exchange(url, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
  assert data.startswith(b"HTTP/1.1 400") and b"GET requests take no body" in data
  assert data.count(b"HTTP/1.1 ") == 1  # the body never became a request


def test_bearer_token_guards_the_api(service):
  server = serve.make_server(service, "127.0.0.1", 0, token="s3cret")
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    status, headers, reply = request(server.url, "GET", "/api/health")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert request(server.url, "GET", "/api/health",
                   headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(server.url, "GET", "/api/health",
                   headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert request(server.url, "GET", "/")[0] == 200  # the page itself is public
  finally:
    stop(server)


def test_non_loopback_bind_needs_a_token(runs):
  with pytest.raises(ValueError, match="--token"):
    serve.main(["--model_dir", runs["nar"], "--host", "0.0.0.0", *SERVER_ARGS])


def test_a_trickled_body_hits_the_total_time_limit(service):
  server = serve.make_server(service, "127.0.0.1", 0, request_time_limit=1.0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    parts = urllib.parse.urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
      sock.sendall(POST_HEAD + b"Content-Length: 100\r\n\r\n{")
      for _ in range(3):
        time.sleep(0.6)
        sock.sendall(b" ")
      data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in data
  finally:
    stop(server)


def test_no_request_compiles(url, service):
  """Every program a client can reach was compiled at start-up."""
  before = service.compiled_programs()
  for alpha in (0.6, 0.61, 0.11, 0.12):
    generate(url, {"texts": TEXTS, "methods": ["ratio_first", "argmax"], "alpha": alpha})
  generate(url, {"texts": TEXTS[:1] * 3, "methods": ["viterbi", "ar_greedy"]})
  assert before is not None and service.compiled_programs() == before


# ------------------------------------------------------- pretraining runs
def test_a_pretraining_run_is_served_and_fills_masks(tmp_path, data_dir):
  """Milestone 2's model before fine-tuning: a run of the pretraining
  experiment loads like any NAG-BERT run, and "[MASK]" in a request is the
  mask token it was trained to fill (one pass, like every request)."""
  del data_dir
  from narlm import predictor as predictor_lib
  run = str(tmp_path / "pretrain")
  make_run(run, ["narlm/gin/pretrain_cpu.gin"])
  loaded = serve.load_model(run)
  gen = predictor_lib.Predictor(loaded.model, loaded.params, max_length=32, length_buckets=(16,),
                                batch_buckets=(1,))
  vocab = loaded.model.input_vocabulary
  ids = gen.encode(["the [MASK] sat on the [MASK]."])[0]
  m = vocab.mask_id
  assert ids[1:-1] == [*vocab.encode("the"), m, *vocab.encode("sat on the"), m,
                       *vocab.encode(".")]  # inside [CLS] ... [SEP]
  assert predictor_lib.encode_with_mask_tokens(vocab, "no masks here") == list(
      vocab.encode("no masks here"))
  out = gen.generate(["the [MASK] sat on the [MASK]."], decode_method="argmax")
  assert len(out) == 1 and isinstance(out[0], str)


def test_a_canvas_run_is_served_with_its_refinement_methods(tmp_path, runs):
  """A canvas (mask-predict) run as --model_dir: mask_predict and
  mask_predict_crf are offered (with the run's ITERATIONS passes), NAG-BERT's
  methods are refused with a reason, the AR model still pairs with it, and
  no message carries an absolute path."""
  run = str(tmp_path / "canvas")
  gin_file = tmp_path / "canvas_tiny.gin"
  gin_file.write_text("include 'narlm/gin/tiny_cpu.gin'\n"
                      "include 'narlm/gin/models/canvas.gin'\n"
                      "MODEL_SIZE = 'tiny'\nUSE_CRF = True\nCRF_BEAM_SIZE = 8\nITERATIONS = 2\n"
                      "MAX_CANVAS_LENGTH = 30\n")
  make_run(run, [str(gin_file)])
  args = serve.parse_args(["--model_dir", run, "--ar_model_dir", runs["ar"], *SERVER_ARGS])
  service = serve.build_service(args)
  assert service.methods == ("mask_predict", "mask_predict_crf", "ar_greedy")
  health = service.health()
  assert health["models"]["nar"]["class"] == "CanvasModel"
  assert "needs a NAG-BERT run" in health["unavailable"]["viterbi"]
  assert str(tmp_path) not in json.dumps(health)
  service.warm_up()
  compiled = service.compiled_programs()
  reply = service.generate({"texts": TEXTS})
  assert [r["method"] for r in reply["results"]] == ["mask_predict", "mask_predict_crf",
                                                     "ar_greedy"]
  assert all(len(r["outputs"]) == len(TEXTS) for r in reply["results"])
  assert service.compiled_programs() == compiled  # warm-up compiled everything
  with pytest.raises(serve.RequestError, match="needs a NAG-BERT run"):
    service.generate({"texts": TEXTS, "methods": ["viterbi"]})
