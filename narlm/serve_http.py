"""The HTTP layer of `narlm.serve`: routes, request bodies, JSON errors and
the checks that keep a web page the user visits from using the API.

Safe by default:
* `Host` must name this server (its bind address, or localhost names when
  bound to loopback; more with `allowed_hosts`): a DNS-rebinding page, whose
  requests carry its own host name, gets 403.
* `POST /api/generate` takes `Content-Type: application/json` only (415
  otherwise): a cross-origin page cannot send that without a CORS preflight,
  which this server never approves, so it cannot reach the model.
* A GET/HEAD with a body is refused (400) and the connection closed, so the
  body is never read as a second request.
* With a bearer token (`--token`, required by `narlm.serve` for a
  non-loopback bind), every `/api/` request needs `Authorization: Bearer ...`.
* Responses carry no absolute paths; each request has a total time limit.
"""

from __future__ import annotations

import hmac
import http
import http.server
import ipaddress
import json
import logging
import os
import socket
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

logger = logging.getLogger("narlm.serve")

if TYPE_CHECKING:
  from narlm.serve import GenerationService

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page loads nothing but its own files and talks to nothing but this server.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# An over-long body is read and discarded up to this size before the 413
# (so the client, still sending, gets the answer); beyond it the connection
# is just closed after the 413.
DRAIN_LIMIT = 8 << 20



class RequestError(Exception):
  """A bad request: answered with `status` and {"error": message}."""

  def __init__(self, status: int, message: str, headers: Optional[Mapping[str, str]] = None):
    super().__init__(message)
    self.status = status
    self.message = message
    self.headers = dict(headers or {})


def _static_files() -> dict[str, str]:
  """URL path -> file for the page's own files (nothing else is served)."""
  files = {}
  if os.path.isdir(STATIC_DIR):
    for name in sorted(os.listdir(STATIC_DIR)):
      if os.path.splitext(name)[1] in STATIC_TYPES:
        files[f"/static/{name}"] = os.path.join(STATIC_DIR, name)
  if "/static/index.html" in files:
    files["/"] = files["/static/index.html"]
  return files


class _Handler(http.server.BaseHTTPRequestHandler):
  server_version = "narlm-serve/0.1"
  protocol_version = "HTTP/1.1"
  timeout = 30  # seconds a client may take to send its request
  error_content_type = "application/json"

  # Set on the subclass make_server creates.
  service: GenerationService
  static_files: Mapping[str, str] = {}
  allowed_hosts: frozenset = frozenset()
  token: Optional[str] = None
  request_time_limit: float = 30.0

  # -- responses
  def _send(self, status: int, body: bytes, content_type: str,
            headers: Optional[Mapping[str, str]] = None) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.send_header("X-Content-Type-Options", "nosniff")
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _send_json(self, status: int, obj: Any, headers: Optional[Mapping[str, str]] = None):
    body = json.dumps(obj).encode("ascii")  # \u escapes: safe for any string
    self._send(status, body, "application/json; charset=utf-8", headers)

  def send_error(self, code, message=None, explain=None):
    """JSON for the errors http.server raises itself (bad request line, 414, 501...)."""
    del explain
    try:
      phrase = http.HTTPStatus(code).phrase
    except ValueError:
      phrase = "error"
    self.close_connection = True
    self.log_error("code %d, message %s", code, message)
    self._send_json(code, {"error": message or phrase})

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logger.info("%s %s", self.address_string(), format % args)

  # -- request body
  def _read_body(self) -> bytes:
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      self.close_connection = True
      raise RequestError(411, "chunked request bodies are not supported: send Content-Length")
    length = self.headers.get("Content-Length")
    if length is None:
      self.close_connection = True
      raise RequestError(411, "missing Content-Length header")
    if not length.strip().isdigit():
      self.close_connection = True
      raise RequestError(400, f"bad Content-Length header {length!r}")
    length = int(length)
    limit = self.service.limits.max_body_bytes
    if length > limit:
      self.close_connection = True
      if length <= DRAIN_LIMIT:
        remaining = length
        while remaining > 0:
          chunk = self.rfile.read(min(remaining, 1 << 16))
          if not chunk:
            break
          remaining -= len(chunk)
      raise RequestError(413, f"request body is {length} bytes; the limit is {limit}")
    # A total limit, not just per read: a body trickled in byte by byte must
    # not hold a worker thread for ever.
    deadline = self._started + self.request_time_limit
    chunks, received = [], 0
    while received < length:
      if time.monotonic() > deadline:
        self.close_connection = True
        raise RequestError(408, f"request body not received within "
                           f"{self.request_time_limit:g} s ({received} of {length} bytes)")
      chunk = self.rfile.read1(min(length - received, 1 << 16))  # what has arrived
      if not chunk:
        self.close_connection = True
        raise RequestError(400, f"request body ended after {received} of {length} bytes")
      chunks.append(chunk)
      received += len(chunk)
    return b"".join(chunks)

  @staticmethod
  def _decode_json(body: bytes) -> Any:
    try:
      text = body.decode("utf-8")
    except UnicodeDecodeError as e:
      raise RequestError(400, f"request body is not valid UTF-8 (byte 0x{body[e.start]:02x} "
                         f"at offset {e.start})") from None
    if not text.strip():
      raise RequestError(400, 'empty request body: send a JSON object such as '
                         '{"texts": ["..."]}')

    def reject_constant(name):
      raise ValueError(f"{name} is not valid JSON")

    try:
      return json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as e:
      raise RequestError(400, f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})"
                         ) from None
    except ValueError as e:
      raise RequestError(400, f"malformed JSON: {e}") from None
    except RecursionError:
      raise RequestError(400, "malformed JSON: nested too deeply") from None

  # -- routing
  def _route(self, method: str):
    path = urllib.parse.urlsplit(self.path).path
    routes = {"/api/generate": ("POST",), "/api/health": ("GET",), "/favicon.ico": ("GET",)}
    for static in self.static_files:
      routes[static] = ("GET",)
    if path not in routes:
      raise RequestError(404, f"no such path: {path}")
    if method not in routes[path] and not (method == "HEAD" and "GET" in routes[path]):
      raise RequestError(405, f"{method} is not allowed on {path}; use "
                         f"{' or '.join(routes[path])}", {"Allow": ", ".join(routes[path])})
    return path

  def _check_request(self, method: str, path: str) -> None:
    """Host, body-less GET/HEAD, bearer token, JSON content type."""
    host = self.headers.get("Host")
    if not host:
      raise RequestError(400, "missing Host header")
    if host_name(host) not in self.allowed_hosts:
      raise RequestError(403, f"Host {host!r} is not this server; allowed host names: "
                         f"{', '.join(sorted(self.allowed_hosts))} (start the server with "
                         "--allowed_hosts to add one)")
    if method in ("GET", "HEAD") and (
        self.headers.get("Content-Length", "0").strip() not in ("", "0")
        or self.headers.get("Transfer-Encoding")):
      self.close_connection = True  # the body is never read, nor taken as a request
      raise RequestError(400, f"{method} requests take no body")
    if self.token is not None and path.startswith("/api/"):
      given = self.headers.get("Authorization", "")
      if not hmac.compare_digest(given.encode("utf-8", "replace"),
                                 f"Bearer {self.token}".encode("utf-8")):
        self.close_connection = method not in ("GET", "HEAD")
        raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                           {"WWW-Authenticate": "Bearer"})
    if method == "POST":
      media_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
      if media_type != "application/json":
        self.close_connection = True
        raise RequestError(415, f"Content-Type must be application/json, got "
                           f"{media_type or 'none'}")

  def _handle(self, method: str) -> None:
    self._started = time.monotonic()
    try:
      path = self._route(method)
      self._check_request(method, path)
      if path == "/api/generate":
        if method == "POST":  # the body of other methods was never read
          payload = self._decode_json(self._read_body())
          self._send_json(200, self.service.generate(payload))
      elif path == "/api/health":
        self._send_json(200, self.service.health())
      elif path == "/favicon.ico":
        self._send(204, b"", "text/plain")
      else:
        file = self.static_files[path]
        with open(file, "rb") as f:
          body = f.read()
        headers = {"Content-Security-Policy": PAGE_CSP} if file.endswith(".html") else {}
        self._send(200, body, STATIC_TYPES[os.path.splitext(file)[1]], headers)
    except RequestError as e:
      if method not in ("GET", "HEAD") and e.status in (404, 405):
        self.close_connection = True  # a body may follow that we did not read
      self._send_json(e.status, {"error": e.message}, e.headers)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
      self.close_connection = True
    except Exception:  # pylint: disable=broad-except
      logger.exception("internal error on %s %s", method, self.path)
      self.close_connection = True
      try:
        self._send_json(500, {"error": "internal error (logged by the server)"})
      except OSError:
        pass

  def do_GET(self):  # pylint: disable=invalid-name
    self._handle("GET")

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._handle("HEAD")

  def do_POST(self):  # pylint: disable=invalid-name
    self._handle("POST")

  def do_PUT(self):  # pylint: disable=invalid-name
    self._handle("PUT")

  def do_DELETE(self):  # pylint: disable=invalid-name
    self._handle("DELETE")

  def do_PATCH(self):  # pylint: disable=invalid-name
    self._handle("PATCH")

  def do_OPTIONS(self):  # pylint: disable=invalid-name
    self._handle("OPTIONS")


def host_name(host_header: str) -> str:
  """'example.com' from 'Example.com:8080', '::1' from '[::1]:8080'."""
  host = host_header.strip().lower()
  if host.startswith("["):
    return host[1:host.find("]")] if "]" in host else host
  if host.count(":") == 1:
    host = host.split(":")[0]
  return host.rstrip(".")


def is_loopback(host: str) -> bool:
  if host.lower() == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False


def default_allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset:
  """Host names a request may carry: the bind address (and the localhost
  names for a loopback bind; this machine's names for a wildcard bind)."""
  names = {host_name(bind_host)}
  if is_loopback(bind_host):
    names |= {"localhost", "127.0.0.1", "::1"}
  if bind_host in ("0.0.0.0", "::", ""):
    names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
  names |= {host_name(h) for h in extra}
  return frozenset(n for n in names if n)


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  # Port reuse: a restarted server does not wait for TIME_WAIT sockets.
  allow_reuse_address = True

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}"


def make_server(service: GenerationService, host: str = "127.0.0.1", port: int = 8080, *,
                allowed_hosts: Iterable[str] = (), token: Optional[str] = None,
                request_time_limit: float = 30.0) -> Server:
  """An HTTP server for `service` (call serve_forever; port 0 = any free port).

  allowed_hosts: host names accepted in `Host` besides the defaults
    (`default_allowed_hosts`). token: bearer token required on /api/.
  """
  if token is not None and not token.strip():
    raise ValueError("the bearer token is empty")
  handler = type("Handler", (_Handler,), {
      "service": service, "static_files": _static_files(),
      "allowed_hosts": default_allowed_hosts(host, allowed_hosts), "token": token,
      "request_time_limit": float(request_time_limit)})
  if "/" not in handler.static_files:
    raise FileNotFoundError(f"the demo page {os.path.join(STATIC_DIR, 'index.html')} is missing")
  return Server((host, port), handler)


