"""Hostile and malformed HTTP input, backend-generic (env KS_TEST_BACKEND).

Every case expects a 4xx JSON error ({"error": "..."}, Content-Type
application/json, no request bytes echoed) or the documented answer, never a
5xx or a crash, and after every case the server must still answer a normal
GET of the JWKS on a new connection.

Requests go over raw sockets (http.client normalizes or refuses most of
them). Read-only cases share one server per class; cases that need their
own flags (--max-body, --request-timeout, --threads) start their own.
"""

import base64
import json
import socket
import threading
import time
import unittest

from harness import (
    AUTH_PATH, BACKEND, JWKS_PATH, LOOPBACK, JwksdTestCase, Response,
    SharedServerTestCase, db_args, http_request, jwks_kids, parse_head, run_jwksd,
    split_jwt,
)

# Unique bytes put into requests; an answer containing them echoes the request.
MARKER = "zq7echomarker"

# How long a single raw exchange may take before we call the server stuck.
RAW_TIMEOUT = 5.0

# CivetWeb's header limit as configured by jwksd (README: 16 KiB).
HEADER_LIMIT = 16 * 1024


# ------------------------------------------------------------------ raw HTTP

class RawResult:
    """What came back on one raw connection.

    responses: the complete responses parsed, in order (harness.Response);
    trailing: bytes after them that did not form a complete response;
    closed: the server closed the connection (EOF seen);
    first_byte_after: seconds from the send until the first byte or the
    close (None if neither happened); closed_after: seconds until EOF.
    """

    def __init__(self):
        self.responses = []
        self.trailing = b""
        self.raw = b""
        self.closed = False
        self.reset = False
        self.first_byte_after = None
        self.closed_after = None

    @property
    def response(self):
        return self.responses[0] if self.responses else None

    def describe(self):
        text = self.raw[:600].decode("latin-1")
        return (f"{len(self.responses)} response(s), closed={self.closed}, "
                f"reset={self.reset}, first byte after {self.first_byte_after}, "
                f"raw {text!r}")


def _parse_one(buf, head_only=False):
    """(Response, rest) if buf starts with a complete response, else None.

    A response without Content-Length is complete only at EOF (the caller
    handles that case)."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    status, reason, headers = parse_head(head)
    length = None
    for name, value in headers:
        if name.lower() == "content-length":
            length = int(value)
    if head_only or status in (204, 304) or 100 <= status < 200:
        length = 0
    if length is None:
        return None
    if len(rest) < length:
        return None
    return Response(status, reason, headers, rest[:length]), rest[length:]


def raw_send(port, data, expect=1, timeout=RAW_TIMEOUT, linger=0.0,
             head_only=False, chunks=None, chunk_delay=0.0):
    """Send data (or the list chunks, with chunk_delay between them) on a new
    connection and read up to expect responses.

    After the responses, wait up to linger seconds for the server to close.
    Reading stops on EOF, a reset, or timeout seconds after the send.
    """
    result = RawResult()
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        if chunks is None:
            chunks = [data]
        for i, chunk in enumerate(chunks):
            if i and chunk_delay:
                time.sleep(chunk_delay)
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server may refuse early and close; read what it said
        sent = time.monotonic()
        deadline = sent + timeout
        buf = b""
        lingering = False
        while True:
            now = time.monotonic()
            if len(result.responses) >= expect and not lingering:
                if linger <= 0:
                    break
                deadline = min(deadline, now + linger)
                lingering = True
            if now >= deadline:
                break
            sock.settimeout(max(0.01, deadline - now))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                result.reset = True
                chunk = b""
            if result.first_byte_after is None:
                result.first_byte_after = time.monotonic() - sent
            if not chunk:
                result.closed = True
                result.closed_after = time.monotonic() - sent
                break
            result.raw += chunk
            buf += chunk
            while len(result.responses) < expect:
                parsed = _parse_one(buf, head_only)
                if parsed is None:
                    break
                response, buf = parsed
                result.responses.append(response)
        result.trailing = buf
        return result
    finally:
        sock.close()


def request_bytes(method, path, headers=(), body=b"", version="HTTP/1.1",
                  host=True, close=True):
    lines = [f"{method} {path} {version}"]
    if host:
        lines.append(f"Host: {LOOPBACK}")
    lines += list(headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------- assertions

class BadInputAssertions:
    """Mixin for JwksdTestCase subclasses: needs self.port_of_server()."""

    def port_of_server(self):
        return self.server.port

    def send(self, data, **kwargs):
        try:
            return raw_send(self.port_of_server(), data, **kwargs)
        except OSError as exc:
            self.failure(f"could not talk to the server: {exc!r}; request "
                         f"{data[:200]!r}")

    def assertNoEcho(self, result, what):
        self.assertNotIn(MARKER.encode(), result.raw,
                         f"{what}: the answer echoes request bytes: {result.describe()}")

    def assertJsonErrorAnswer(self, result, what, statuses=None):
        """The first answer is a 4xx (or one of statuses) with a JSON error
        body, Content-Type application/json, and no request bytes."""
        resp = result.response
        if resp is None:
            self.failure(f"{what}: no complete answer within {RAW_TIMEOUT} s "
                         f"(want a 4xx JSON error): {result.describe()}")
        if statuses is None:
            self.assertTrue(400 <= resp.status < 500,
                            f"{what}: want a 4xx, got {resp.describe()}")
        else:
            self.assertIn(resp.status, statuses, f"{what}: {resp.describe()}")
        self.assertJsonError(resp, resp.status, what)
        self.assertNoEcho(result, what)
        return resp

    def assertTokenAnswer(self, resp, what, expired=None):
        """resp is the documented 200 {"token": ...}; returns the token."""
        self.assertEqual(resp.status, 200, f"{what}: {resp.describe()}")
        self.assertJsonContentType(resp, what)
        try:
            token = resp.json()["token"]
        except (ValueError, KeyError, TypeError) as exc:
            self.failure(f"{what}: 200 without a JSON token ({exc!r}): {resp.describe()}")
        _, claims = self.assertTokenWellFormed(token, what)
        if expired is True:
            self.assertLess(claims["exp"], time.time(), f"{what}: exp not in the past")
        elif expired is False:
            self.assertGreater(claims["exp"], time.time(), f"{what}: exp in the past")
        return token

    def assertStillServes(self, what):
        """A normal GET of the JWKS on a new connection gets 200 {"keys": [...]}."""
        try:
            resp = http_request(self.port_of_server(), "GET", JWKS_PATH, timeout=10)
        except OSError as exc:
            self.failure(f"after {what}: GET {JWKS_PATH} failed: {exc!r}")
        self.assertEqual(resp.status, 200,
                         f"after {what}: GET {JWKS_PATH}: {resp.describe()}")
        self.assertGreaterEqual(len(jwks_kids(resp.json())), 1,
                                f"after {what}: empty JWKS {resp.describe()}")


class SharedBadInputCase(BadInputAssertions, SharedServerTestCase):

    def setUp(self):
        super().setUp()
        # The keys exist before the first case: no case waits for key generation.
        self.assertStillServes("start")


# ------------------------------------------------------------ request screen

class RequestScreenTests(SharedBadInputCase):
    """Request lines and headers the server must refuse with a 4xx JSON error."""

    def test_headers_over_16k_are_refused(self):
        big = "a" * (HEADER_LIMIT + 1024)
        cases = {
            "one 17 KiB header": [f"X-Big: {MARKER}{big}"],
            "200 headers of 100 bytes": [f"X-H{i}: {MARKER}{'b' * 100}" for i in range(200)],
            "17 KiB request target": None,
        }
        for name, headers in cases.items():
            with self.subTest(name):
                if headers is None:
                    data = request_bytes("GET", f"{JWKS_PATH}?{MARKER}{big}")
                else:
                    data = request_bytes("GET", JWKS_PATH, headers)
                result = self.send(data, linger=2.0)
                self.assertJsonErrorAnswer(result, name)
                self.assertTrue(result.closed or result.reset,
                                f"{name}: connection left open after a refused "
                                f"request: {result.describe()}")
                self.assertStillServes(name)

    def test_headers_just_under_the_limit_are_served(self):
        # The limit is not absurdly low: 14 KiB of headers is a normal request.
        headers = [f"X-Pad{i}: {'p' * 1000}" for i in range(14)]
        result = self.send(request_bytes("GET", JWKS_PATH, headers))
        self.assertIsNotNone(result.response, result.describe())
        self.assertEqual(result.response.status, 200,
                         f"14 KiB of headers: {result.response.describe()}")

    def test_garbage_request_lines(self):
        cases = [
            b"GARBAGE " + MARKER.encode() + b"\r\n\r\n",
            b"\x00\x01\x02\xff\xfe" + MARKER.encode() + b"\r\n\r\n",
            b"GET\r\n\r\n",
            b" \r\n\r\n",
            b"\r\n\r\n",
            b"GET /" + MARKER.encode() + b"\r\n\r\n",  # HTTP/0.9 style
            b"GET /auth HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            b"get /.well-known/jwks.json http/1.1\r\nHost: x\r\n\r\n",
            b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
            b"A" * 10000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # TLS hello
        ]
        for data in cases:
            what = f"request {data[:50]!r}"
            with self.subTest(what):
                result = self.send(data)
                self.assertJsonErrorAnswer(result, what)
                self.assertStillServes(what)

    def test_unsupported_http_version_is_refused(self):
        # 505 is the RFC 9110 answer for an unsupported major version; a 4xx
        # is fine too. Never served as if it were HTTP/1.x.
        for version in ("HTTP/2.0", "HTTP/9.9", "HTTP/3", "HTTP/1.x", "HTTP/1.10"):
            with self.subTest(version):
                data = request_bytes("GET", JWKS_PATH, version=version)
                result = self.send(data)
                resp = result.response
                self.assertIsNotNone(resp, f"{version}: {result.describe()}")
                self.assertTrue(400 <= resp.status < 500 or resp.status == 505,
                                f"{version}: want 4xx or 505: {resp.describe()}")
                self.assertJsonError(resp, resp.status, version)
                self.assertStillServes(version)

    def test_http2_preface_is_refused_with_http1_json(self):
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        # The preface alone, and followed by an empty SETTINGS frame.
        for data in (preface, preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"):
            with self.subTest(len=len(data)):
                result = self.send(data)
                self.assertTrue(result.raw.startswith(b"HTTP/1."),
                                f"HTTP/2 preface: answer is not HTTP/1.x: {result.describe()}")
                self.assertJsonErrorAnswer(result, "HTTP/2 preface")
                self.assertStillServes("HTTP/2 preface")

    def test_http11_without_host_is_400(self):
        for method, path in (("GET", JWKS_PATH), ("POST", AUTH_PATH), ("GET", "/nope")):
            with self.subTest(method=method, path=path):
                data = request_bytes(method, path, [f"X-Probe: {MARKER}",
                                                    "Content-Length: 0"], host=False)
                result = self.send(data)
                self.assertJsonErrorAnswer(result, f"HTTP/1.1 {method} {path} without Host",
                                           statuses=(400,))
                self.assertStillServes("missing Host")

    def test_bad_content_length_is_4xx(self):
        # RFC 9110 8.6: Content-Length = 1*DIGIT; RFC 9112 6.3: differing
        # values are an unrecoverable framing error (request smuggling).
        cases = {
            "negative": ["Content-Length: -1"],
            "non-numeric": ["Content-Length: abc"],
            "empty": ["Content-Length: "],
            "exponent": ["Content-Length: 1e3"],
            "hex": ["Content-Length: 0x10"],
            "plus sign": ["Content-Length: +6"],
            "list of two values": ["Content-Length: 6, 7"],
            "two headers, different values": ["Content-Length: 6", "Content-Length: 7"],
            "beyond 64 bits": ["Content-Length: 99999999999999999999999"],
        }
        for name, headers in cases.items():
            with self.subTest(name):
                data = request_bytes("POST", AUTH_PATH,
                                     headers + [f"X-Probe: {MARKER}"],
                                     body=b"abcdef")
                result = self.send(data)
                self.assertJsonErrorAnswer(result, f"Content-Length {name}: {headers}")
                self.assertStillServes(name)

    def test_chunked_with_content_length_is_400_and_closes(self):
        # CivetWeb lets chunked win; a proxy that picks Content-Length would
        # see the smuggled request below. jwksd must refuse both and answer
        # exactly once.
        smuggled = (b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        cases = {
            "TE then CL": ["Transfer-Encoding: chunked", f"Content-Length: {len(smuggled)}"],
            "CL then TE": [f"Content-Length: {len(smuggled)}", "Transfer-Encoding: chunked"],
            "Chunked capitalised": ["Transfer-Encoding: Chunked", "Content-Length: 3"],
            "lower-case names": ["transfer-encoding: chunked", "content-length: 3"],
            "CL zero": ["Content-Length: 0", "Transfer-Encoding: chunked"],
        }
        for name, headers in cases.items():
            with self.subTest(name):
                data = request_bytes("POST", AUTH_PATH, headers + [f"X-Probe: {MARKER}"],
                                     body=smuggled, close=False)
                result = self.send(data, expect=2, timeout=3.0)
                self.assertJsonErrorAnswer(result, name, statuses=(400,))
                self.assertEqual(len(result.responses), 1,
                                 f"{name}: the smuggled request was answered too: "
                                 f"{result.describe()}")
                self.assertTrue(result.closed or result.reset,
                                f"{name}: connection not closed after the refusal: "
                                f"{result.describe()}")
                self.assertStillServes(name)

    def test_transfer_encoding_other_than_chunked_is_4xx(self):
        for coding in ("gzip", "gzip, chunked", "chunked, gzip", "identity", "x-" + MARKER):
            with self.subTest(coding):
                data = request_bytes("POST", AUTH_PATH,
                                     [f"Transfer-Encoding: {coding}"],
                                     body=b"0\r\n\r\n")
                result = self.send(data)
                self.assertJsonErrorAnswer(result, f"Transfer-Encoding: {coding}")
                self.assertStillServes(coding)

    def test_upgrade_is_never_101(self):
        websocket = ["Connection: Upgrade", "Upgrade: websocket",
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                     "Sec-WebSocket-Version: 13", f"Origin: https://{MARKER}.example"]
        h2c = ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
               "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"]
        cases = [("GET", JWKS_PATH, websocket), ("GET", AUTH_PATH, websocket),
                 ("POST", AUTH_PATH, websocket + ["Content-Length: 0"]),
                 ("GET", "/", websocket), ("GET", JWKS_PATH, h2c)]
        for method, path, headers in cases:
            what = f"{method} {path} {headers[1]}"
            with self.subTest(what):
                result = self.send(request_bytes(method, path, headers, close=False),
                                   linger=1.0)
                resp = result.response
                self.assertIsNotNone(resp, f"{what}: {result.describe()}")
                self.assertNotEqual(resp.status, 101, f"{what}: switched protocols")
                self.assertIsNone(resp.header("Sec-WebSocket-Accept"),
                                  f"{what}: {resp.describe()}")
                self.assertJsonErrorAnswer(result, what)
                self.assertStillServes(what)

    def test_options_with_foreign_origin_allows_no_origin(self):
        origin = "https://evil.example"
        for path in (AUTH_PATH, JWKS_PATH, "/", "/nope"):
            with self.subTest(path):
                headers = [f"Origin: {origin}", "Access-Control-Request-Method: POST",
                           f"Access-Control-Request-Headers: x-{MARKER}"]
                result = self.send(request_bytes("OPTIONS", path, headers))
                resp = self.assertJsonErrorAnswer(result, f"OPTIONS {path}")
                for value in resp.header_values("Access-Control-Allow-Origin"):
                    self.assertNotIn(value.strip(), ("*", origin),
                                     f"OPTIONS {path}: CORS allows {value!r}")
                self.assertNotEqual(
                    (resp.header("Access-Control-Allow-Credentials") or "").lower(),
                    "true", f"OPTIONS {path}: {resp.describe()}")
                self.assertStillServes(f"OPTIONS {path}")


# ---------------------------------------------------------------- body caps

class DefaultBodyCapTests(SharedBadInputCase):
    """The default 64 KiB cap."""

    CAP = 64 * 1024

    def test_declared_body_over_the_cap_is_413_without_reading_it(self):
        for length in (10_000_000, self.CAP + 1):
            with self.subTest(length=length):
                # Only the headers: the 413 must come without the body.
                data = request_bytes("POST", AUTH_PATH,
                                     [f"Content-Length: {length}",
                                      "Content-Type: application/json",
                                      f"X-Probe: {MARKER}"], close=False)
                result = self.send(data, timeout=5.0)
                self.assertJsonErrorAnswer(result, f"Content-Length {length}",
                                           statuses=(413,))
                self.assertLess(result.first_byte_after, 2.0,
                                f"the 413 took {result.first_byte_after:.2f} s: the "
                                "server waited for a body it must not read")
                self.assertStillServes(f"Content-Length {length}")

    def test_body_of_exactly_the_cap_is_served(self):
        body = b"x" * self.CAP
        data = request_bytes("POST", AUTH_PATH, [f"Content-Length: {len(body)}"], body=body)
        result = self.send(data)
        self.assertIsNotNone(result.response, result.describe())
        self.assertTokenAnswer(result.response, "a 64 KiB body")


class SmallBodyCapTests(SharedBadInputCase):
    """--max-body 1K, --request-timeout 1500."""

    server_args = ("--max-body", "1K", "--request-timeout", "1500")
    CAP = 1024
    TIMEOUT = 1.5

    def test_declared_body_over_1k_is_413_at_once(self):
        for length in (self.CAP + 1, 10_000_000):
            with self.subTest(length=length):
                data = request_bytes("POST", AUTH_PATH, [f"Content-Length: {length}"],
                                     close=False)
                result = self.send(data, timeout=5.0)
                self.assertJsonErrorAnswer(result, f"--max-body 1K, Content-Length {length}",
                                           statuses=(413,))
                self.assertLess(result.first_byte_after, 2.0,
                                f"the 413 took {result.first_byte_after:.2f} s")
                self.assertStillServes(f"Content-Length {length}")

    def test_body_of_exactly_1k_is_served(self):
        body = b"{" + b" " * (self.CAP - 2) + b"}"
        data = request_bytes("POST", AUTH_PATH,
                             [f"Content-Length: {len(body)}",
                              "Content-Type: application/json"], body=body)
        result = self.send(data)
        self.assertIsNotNone(result.response, result.describe())
        self.assertTokenAnswer(result.response, "a 1 KiB body with --max-body 1K")

    def test_chunked_body_over_the_cap_is_413(self):
        # No declared length: the body counts against --max-body as it
        # arrives, even on the open issuer, which ignores it.
        chunk = b"y" * 1000
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
        data = request_bytes("POST", AUTH_PATH, ["Transfer-Encoding: chunked"], body=body)
        result = self.send(data, linger=3.0)
        self.assertJsonErrorAnswer(result, "8 KB chunked body", statuses=(413,))
        self.assertTrue(result.closed, f"8 KB chunked body: not closed: {result.describe()}")
        self.assertStillServes("chunked body over the cap")

    def assertActsWithinTimeout(self, result, what):
        bound = 2 * self.TIMEOUT  # the timeout plus generous slack
        acted = result.first_byte_after
        self.assertIsNotNone(acted, f"{what}: neither answered nor closed within "
                                    f"{RAW_TIMEOUT} s: {result.describe()}")
        self.assertLessEqual(acted, bound,
                             f"{what}: first answer or close after {acted:.2f} s, want "
                             f"within {bound} s (--request-timeout 1500)")

    def test_body_shorter_than_content_length_then_stall(self):
        for ctype in ("application/json", "application/x-www-form-urlencoded"):
            with self.subTest(ctype):
                data = request_bytes("POST", AUTH_PATH,
                                     ["Content-Length: 100", f"Content-Type: {ctype}"],
                                     body=b'{"username":', close=False)
                # Read until the server closes (or 6 s pass).
                result = self.send(data, expect=1, linger=6.0, timeout=6.0)
                what = "12 of 100 body bytes, then a stall"
                self.assertActsWithinTimeout(result, what)
                resp = result.response
                if resp is not None:
                    if resp.status == 200:
                        self.assertTokenAnswer(resp, what)  # the body is ignored
                    else:
                        self.assertJsonErrorAnswer(result, what)
                # The stalled connection must not hold a worker for long:
                # closed within the timeout plus one keep-alive idle period.
                limit = 3 * self.TIMEOUT
                self.assertTrue(result.closed or result.reset,
                                f"{what}: still open after 6 s: {result.describe()}")
                self.assertLessEqual(result.closed_after or 0.0, limit,
                                     f"{what}: closed only after {result.closed_after:.2f} s, "
                                     f"want within {limit} s")
                self.assertStillServes(what)

    def test_headers_incomplete_then_stall(self):
        data = f"GET {JWKS_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\nX-Half: ".encode()
        result = self.send(data, expect=1, linger=6.0, timeout=6.0)
        what = "half a header block, then a stall"
        self.assertActsWithinTimeout(result, what)
        if result.response is not None:
            self.assertJsonErrorAnswer(result, what)
        self.assertTrue(result.closed or result.reset,
                        f"{what}: connection still open: {result.describe()}")
        self.assertStillServes(what)


# ---------------------------------------------------------------- slow-loris

class SlowLorisTests(BadInputAssertions, JwksdTestCase):

    THREADS = 4
    SLOW_CONNECTIONS = 12
    TRICKLE_INTERVAL = 0.5
    FRESH_CLIENT_BOUND = 8.0

    def port_of_server(self):
        return self.slow_server.port

    def test_slow_clients_do_not_starve_a_fresh_client(self):
        self.slow_server = self.start_server("--threads", str(self.THREADS))
        self.assertStillServes("start")  # keys exist before the attack
        head = f"GET {JWKS_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\nX-Slow: ".encode()
        socks = []
        stop = threading.Event()
        trickler = None

        def close_all():
            stop.set()
            if trickler is not None:
                trickler.join(5)
            for sock in socks:
                sock.close()
        self.addCleanup(close_all)
        for _ in range(self.SLOW_CONNECTIONS):
            socks.append(socket.create_connection((LOOPBACK, self.slow_server.port),
                                                  timeout=2))

        def trickle():
            # At most 40 bytes per connection (20 s), one every 0.5 s.
            for i in range(40):
                if stop.is_set():
                    return
                byte = head[i:i + 1] if i < len(head) else b"a"
                for sock in socks:
                    try:
                        sock.send(byte)
                    except OSError:
                        pass
                stop.wait(self.TRICKLE_INTERVAL)
        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        time.sleep(1.0)  # every slow connection is accepted and trickling

        started = time.monotonic()
        try:
            resp = http_request(self.slow_server.port, "GET", JWKS_PATH,
                                timeout=self.FRESH_CLIENT_BOUND + 12)
        except OSError as exc:
            self.failure(f"a fresh client failed during the slow-loris attack: {exc!r}")
        waited = time.monotonic() - started
        self.assertEqual(resp.status, 200, resp.describe())
        self.assertLessEqual(
            waited, self.FRESH_CLIENT_BOUND,
            f"a fresh client waited {waited:.1f} s for the JWKS while "
            f"{self.SLOW_CONNECTIONS} connections trickled one header byte every "
            f"{self.TRICKLE_INTERVAL} s against --threads {self.THREADS}; the bound "
            f"is {self.FRESH_CLIENT_BOUND} s")
        close_all()
        self.assertStillServes("slow-loris")


# ------------------------------------------------------------- path variants

class PathVariantTests(SharedBadInputCase):
    """Odd paths and query strings: a 4xx JSON error or the documented answer."""

    LONG_QUERY = "&".join(f"k{i}=v{i}" for i in range(600))[:4096]

    def exchange(self, method, path, headers=()):
        data = request_bytes(method, path, list(headers) + ["Content-Length: 0"])
        result = self.send(data)
        self.assertIsNotNone(result.response,
                             f"{method} {path[:80]}: no answer: {result.describe()}")
        self.assertLess(result.response.status, 500,
                        f"{method} {path[:80]}: {result.response.describe()}")
        return result

    def test_paths_that_are_not_a_route_are_4xx(self):
        paths = ["/auth/x", "/AUTH", "/Auth", "/auth%00", "/auth%2f", "/auth/",
                 "/auth;x", "/auth.json", "/.well-known/JWKS.json",
                 "/.well-known/jwks.json%00", "/.well-known%2fjwks.json",
                 f"/{MARKER}/../../etc/passwd", "/..", "/%2e%2e/auth",
                 "/" + "a" * 3000]
        for path in paths:
            for method in ("POST", "GET"):
                with self.subTest(method=method, path=path[:60]):
                    result = self.exchange(method, path)
                    self.assertJsonErrorAnswer(result, f"{method} {path[:60]}")
                    self.assertNotIn(b"token", result.response.body)
        self.assertStillServes("path variants")

    def test_absolute_form_and_asterisk_targets_get_an_answer(self):
        # RFC 9112 3.2.2: a server MUST accept the absolute-form. For this
        # server's own authority it is /auth (a token) or a 4xx; for another
        # host a 4xx. "*" is only meaningful with OPTIONS. CivetWeb 1.15
        # closes such connections unanswered before jwksd sees the request:
        # accepted as a documented limitation, as long as nothing is served
        # and the server keeps serving.
        own = f"http://{LOOPBACK}:{self.server.port}"
        cases = [("POST", own + AUTH_PATH, True), ("GET", own + JWKS_PATH, True),
                 ("POST", "http://evil.example/auth", False),
                 ("GET", f"http://{MARKER}.example{JWKS_PATH}", False),
                 ("OPTIONS", "*", False), ("GET", "*", False), ("POST", "*", False)]
        for method, target, may_serve in cases:
            what = f"{method} {target}"
            with self.subTest(f"{method} {target.replace(own, 'http://<this server>')}"):
                result = self.send(request_bytes(method, target, ["Content-Length: 0"]))
                resp = result.response
                if resp is None and result.closed:
                    # Known limitation, documented in the README: CivetWeb
                    # 1.15 closes these connections before any hook of ours
                    # runs. Nothing is served; the server must stay up.
                    self.assertEqual(result.raw, b"", result.describe())
                    self.assertStillServes(what)
                    continue
                self.assertIsNotNone(resp, f"{what}: no answer and no close: "
                                           f"{result.describe()}")
                if method == "OPTIONS" and 200 <= resp.status < 300:
                    self.assertNotIn("*", resp.header_values("Access-Control-Allow-Origin"))
                elif may_serve and resp.status == 200:
                    if method == "POST":
                        self.assertTokenAnswer(resp, what, expired=False)
                    else:
                        self.assertIn("keys", resp.json(), resp.describe())
                else:
                    self.assertJsonErrorAnswer(result, what)
                self.assertStillServes(what)

    def test_paths_that_normalize_to_auth(self):
        # Either refused (4xx JSON) or served as /auth (200 with a token).
        paths = ["//auth", "/x/../auth", "/./auth", "/%61uth", "/" * 2000 + "auth",
                 "/auth/.", "/auth/x/.."]
        for path in paths:
            with self.subTest(path=path[:60]):
                result = self.exchange("POST", path)
                if result.response.status == 200:
                    self.assertTokenAnswer(result.response, f"POST {path[:60]}",
                                           expired=False)
                else:
                    self.assertJsonErrorAnswer(result, f"POST {path[:60]}")
        self.assertStillServes("paths that normalize to /auth")

    def test_odd_query_strings(self):
        # (query, allowed answers): "token" is the documented 200, "expired"
        # a 200 with an expired token, "error" a 4xx JSON error.
        cases = [
            ("expired=true&expired=false", {"token", "expired", "error"}),
            ("expired=false&expired=true", {"token", "expired", "error"}),
            ("expired=%00", {"error"}),
            ("expired=true%00", {"error"}),
            ("expired=%74rue", {"expired", "error"}),
            ("expired=" + "t" * 5000, {"error"}),
            ("=&&==", {"token", "error"}),
            ("&&&", {"token", "error"}),
            ("expired", {"token", "error"}),
            ("%zz=%", {"token", "error"}),
            (self.LONG_QUERY, {"token", "error"}),
            (f"{MARKER}=%ff%fe", {"token", "error"}),
        ]
        for query, allowed in cases:
            path = f"{AUTH_PATH}?{query}"
            with self.subTest(query=query[:60]):
                result = self.exchange("POST", path)
                resp = result.response
                if resp.status == 200:
                    token = self.assertTokenAnswer(resp, f"POST {path[:60]}")
                    kind = "expired" if split_jwt(token)[1]["exp"] < time.time() else "token"
                    self.assertIn(kind, allowed,
                                  f"POST {path[:60]}: got a 200 with an {kind} token, "
                                  f"want one of {sorted(allowed)}")
                else:
                    self.assertIn("error", allowed,
                                  f"POST {path[:60]}: got {resp.describe()}, want one "
                                  f"of {sorted(allowed)}")
                    self.assertJsonErrorAnswer(result, f"POST {path[:60]}")
        self.assertStillServes("odd query strings")

    def test_long_query_on_jwks(self):
        result = self.exchange("GET", f"{JWKS_PATH}?{self.LONG_QUERY}")
        if result.response.status != 200:
            self.assertJsonErrorAnswer(result, "GET JWKS with a 4 KiB query")
        self.assertStillServes("long JWKS query")


# --------------------------------------------------------------- JSON bodies

class JsonBodyTests(SharedBadInputCase):
    """POST /auth ignores the body in open mode: every body gets a token."""

    def bodies(self):
        deep_arrays = b"[" * 10000 + b"]" * 10000
        deep_objects = b'{"a":' * 10000 + b"1" + b"}" * 10000
        return {
            "empty": b"",
            "truncated object": b'{"username": "userABC", "pass',
            "truncated string": b'"abc',
            "trailing garbage": b'{"username": "userABC"} trailing',
            "two objects": b"{}{}",
            "top-level array": b'["userABC", "password123"]',
            "top-level string": b'"userABC"',
            "top-level null": b"null",
            "top-level number": b"42",
            "10,000-deep arrays": deep_arrays,
            "10,000-deep objects": deep_objects,
            "escaped NUL": b'{"username": "\\u0000", "password": "a\\u0000b"}',
            "raw NUL byte": b'{"username": "\x00"}',
            "invalid UTF-8": b'{"username": "\xff\xfe\xc3\x28\xa0\xa1"}',
            "overlong UTF-8": b'{"username": "\xc0\xaf\xe0\x80\xaf"}',
            "lone surrogate": b'{"username": "\\ud800"}',
            "huge integer": b'{"n": ' + b"9" * 20000 + b"}",
            "huge exponent": b'{"n": 1e999999999, "m": -1e-999999999}',
            "60 KiB string": b'{"username": "' + b"u" * (60 * 1024) + b'"}',
            "many keys": b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(5000)) + b"}",
            "duplicate keys": b'{"username": "a", "username": "b"}',
            "BOM": b'\xef\xbb\xbf{"username": "userABC"}',
        }

    def test_json_bodies_never_5xx(self):
        for name, body in self.bodies().items():
            with self.subTest(name):
                self.assertLessEqual(len(body), 64 * 1024, f"{name} is over the cap")
                data = request_bytes("POST", AUTH_PATH,
                                     ["Content-Type: application/json",
                                      f"Content-Length: {len(body)}"], body=body)
                result = self.send(data)
                self.assertIsNotNone(result.response, f"{name}: {result.describe()}")
                self.assertTokenAnswer(result.response, f"JSON body {name}", expired=False)
                self.assertStillServes(f"JSON body {name}")

    def test_charset_and_content_type_variants(self):
        body = '{"username": "userABC"}'.encode("utf-16")
        for ctype in ("application/json; charset=utf-16", "application/json; charset=bogus",
                      "application/x-www-form-urlencoded", "multipart/form-data",
                      "text/plain", f"application/{MARKER}"):
            with self.subTest(ctype):
                data = request_bytes("POST", AUTH_PATH,
                                     [f"Content-Type: {ctype}",
                                      f"Content-Length: {len(body)}"], body=body)
                result = self.send(data)
                self.assertIsNotNone(result.response, f"{ctype}: {result.describe()}")
                self.assertTokenAnswer(result.response, f"Content-Type {ctype}")
                self.assertNoEcho(result, ctype)


# ------------------------------------------------ JSON bodies of the accounts

REGISTER_PATH = "/register"
# Over the 64 KiB a route reads: 413 (the declared length) or 400.
BIG = 1024 * 1024


def basic_value(raw):
    """An Authorization value for HTTP Basic of raw bytes user:password."""
    return "Basic " + base64.b64encode(raw).decode("ascii")


class AccountJsonCase(SharedBadInputCase):
    """Hostile JSON on POST /register and POST /auth, with one real user
    (registered once for the class) whose credentials some bodies nearly
    carry: no case may register anyone, log anyone in, answer a 5xx or
    echo the request."""

    login_required = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        body = json.dumps({"username": "alice"}).encode()
        resp = http_request(cls.server.port, "POST", REGISTER_PATH, body=body,
                            headers={"Content-Type": "application/json"})
        if resp.status != 201:
            raise AssertionError(f"registering alice: {resp.describe()}"
                                 f"{cls.server.context()}")
        cls.password = resp.json()["password"]

    def post(self, path, body, headers=(), chunked=False):
        hdrs = ["Content-Type: application/json"] + list(headers)
        if chunked:
            hdrs.append("Transfer-Encoding: chunked")
            step = 64 * 1024
            body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                            for i in range(0, len(body), step)) + b"0\r\n\r\n"
        else:
            hdrs.append(f"Content-Length: {len(body)}")
        return self.send(request_bytes("POST", path, hdrs, body=body), timeout=10.0)

    def bodies(self):
        """(name, body, chunked) for both routes; MARKER in most of them."""
        m = MARKER.encode()
        pw = self.password.encode()
        return [
            ("100,000 '['", b"[" * 100_000, False),
            ("100,000 '[' chunked", b"[" * 100_000, True),
            ("60,000 '['", b"[" * 60_000, False),
            ("30,000-deep arrays, closed", b"[" * 30_000 + b"]" * 30_000, False),
            ("10,000-deep objects", b'{"username":' * 10_000 + b"1" + b"}" * 10_000, False),
            ("deep value of username",
             b'{"username": ' + b"[" * 20_000 + b"]" * 20_000 + b', "password": "x"}',
             False),
            ("1 MiB username", b'{"username": "' + m + b"u" * BIG + b'"}', False),
            ("1 MiB username chunked", b'{"username": "' + m + b"u" * BIG + b'"}', True),
            ("1 MiB email", b'{"username": "a' + m + b'", "email": "' + b"e" * BIG
             + b'@example.com"}', False),
            ("60 KiB username", b'{"username": "' + m + b"u" * (60 * 1024) + b'"}', False),
            ("invalid UTF-8 username", b'{"username": "\xff\xfe' + m + b'"}', False),
            ("overlong UTF-8 username", b'{"username": "\xc0\xaf' + m + b'"}', False),
            ("CESU surrogate bytes", b'{"username": "\xed\xa0\x80' + m + b'"}', False),
            ("lone surrogate escape", b'{"username": "\\ud800' + m + b'"}', False),
            ("invalid UTF-8 email", b'{"username": "b' + m + b'", "email": "\xff@x.org"}',
             False),
            ("invalid UTF-8 in a member name", b'{"user\xffname": "b' + m + b'"}', False),
            ("duplicate username", b'{"username": "alice", "username": "b' + m + b'"}',
             False),
            ("duplicate username, same value",
             b'{"username": "alice", "username": "alice", "password": "' + pw + b'"}',
             False),
            ("duplicate password, the right one last",
             b'{"username": "alice", "password": "x' + m + b'", "password": "' + pw
             + b'"}', False),
            ("number username", b'{"username": 12345, "password": "' + pw + b'"}', False),
            ("float username", b'{"username": 1e999, "password": "' + pw + b'"}', False),
            ("huge integer username", b'{"username": ' + b"9" * 20_000 + b"}", False),
            ("bool username", b'{"username": true, "password": "' + pw + b'"}', False),
            ("array username", b'{"username": ["alice"], "password": "' + pw + b'"}',
             False),
            ("object username", b'{"username": {"alice": 1}, "password": "' + pw
             + b'"}', False),
            ("null username", b'{"username": null, "password": "' + pw + b'"}', False),
            ("number password", b'{"username": "alice", "password": 12345}', False),
            ("number email", b'{"username": "c' + m + b'", "email": 12345}', False),
            ("NUL escape in username", b'{"username": "alice\\u0000' + m
             + b'", "password": "' + pw + b'"}', False),
            ("NUL escape alone", b'{"username": "\\u0000", "password": "' + pw + b'"}',
             False),
            ("NUL escape in email", b'{"username": "d' + m + b'", '
             b'"email": "d\\u0000@example.com"}', False),
            ("NUL escape after the password", b'{"username": "alice", "password": "'
             + pw + b'\\u0000' + m + b'"}', False),
            ("raw NUL byte in username", b'{"username": "alice\x00' + m + b'", '
             b'"password": "' + pw + b'"}', False),
            ("credentials nested", b'{"credentials": {"username": "alice", '
             b'"password": "' + pw + b'"}}', False),
            ("credentials in an array", b'[{"username": "alice", "password": "' + pw
             + b'"}]', False),
            ("two objects", b'{"username": "alice", "password": "' + pw + b'"}'
             b'{"username": "e' + m + b'"}', False),
            ("5,000 members", b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(5000))
             + b"}", False),
        ]

    def assertNoLogin(self, result, what):
        """A 4xx JSON error, or (open mode, /auth) an anonymous token."""
        resp = result.response
        self.assertIsNotNone(resp, f"{what}: no answer: {result.describe()}")
        self.assertLess(resp.status, 500, f"{what}: {resp.describe()}")
        if resp.status == 200 and not self.login_required:
            token = self.assertTokenAnswer(resp, what, expired=False)
            claims = split_jwt(token)[1]
            self.assertNotIn("sub", claims, f"{what}: logged in as {claims}")
            self.assertNotIn("preferred_username", claims, f"{what}: {claims}")
        else:
            self.assertJsonErrorAnswer(result, what)
        self.assertNoEcho(result, what)
        return resp

    def test_register_refuses_every_hostile_body(self):
        for name, body, chunked in self.bodies():
            with self.subTest(name):
                result = self.post(REGISTER_PATH, body, chunked=chunked)
                resp = result.response
                self.assertIsNotNone(resp, f"register, {name}: {result.describe()}")
                allowed = (400, 413) if len(body) > 64 * 1024 else (400,)
                self.assertJsonErrorAnswer(result, f"register, {name}", statuses=allowed)
                self.assertNotIn(b"password", resp.body, resp.describe())
                self.assertStillServes(f"register, {name}")
        res = run_jwksd(["users", "list", "--json", "--backend", BACKEND,
                         *db_args(self.server.db)], cwd=self.server.workdir, timeout=30)
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertEqual([u["username"] for u in json.loads(res.stdout)], ["alice"],
                         "a hostile body registered a user")

    def test_auth_never_logs_in_on_a_hostile_body(self):
        for name, body, chunked in self.bodies():
            with self.subTest(name):
                result = self.post(AUTH_PATH, body, chunked=chunked)
                resp = self.assertNoLogin(result, f"/auth, {name}")
                if self.login_required:
                    self.assertIn(resp.status, (400, 401, 413), resp.describe())
                self.assertStillServes(f"/auth, {name}")

    def test_auth_never_logs_in_on_hostile_basic_credentials(self):
        pw = self.password.encode()
        cases = {
            "NUL in the username": basic_value(b"alice\x00:" + pw),
            "NUL after the password": basic_value(b"alice:" + pw + b"\x00"),
            "invalid UTF-8 username": basic_value(b"\xff\xfe:" + pw),
            "no colon": basic_value(b"alice" + pw),
            "empty username": basic_value(b":" + pw),
            "10 KiB username": basic_value(b"a" * 10240 + b":" + pw),
            "4 KiB password": basic_value(b"alice:" + b"p" * 4096),
            "not base64": "Basic " + MARKER + "!!!",
            "only padding": "Basic " + "=" * 64,
            "no credentials after the scheme": "Basic",
            "two schemes": "Basic " + basic_value(b"alice:" + pw)[6:] + ", Bearer x",
        }
        for name, value in cases.items():
            with self.subTest(name):
                data = request_bytes("POST", AUTH_PATH,
                                     [f"Authorization: {value}", "Content-Length: 0"])
                resp = self.assertNoLogin(self.send(data), f"Basic, {name}")
                if self.login_required:
                    self.assertEqual(resp.status, 401, resp.describe())
                self.assertStillServes(f"Basic, {name}")

    def test_the_real_credentials_still_log_in(self):
        # The control: the cases above are refused for what they are.
        body = json.dumps({"username": "alice", "password": self.password}).encode()
        for headers, payload in (([], body),
                                 ([f"Authorization: {basic_value(b'alice:' + self.password.encode())}"],
                                  b"")):
            result = self.post(AUTH_PATH, payload, headers)
            token = self.assertTokenAnswer(result.response, "alice's login")
            self.assertEqual(split_jwt(token)[1].get("preferred_username"), "alice")


class AccountJsonOpenTests(AccountJsonCase):
    """--login open (the default): anonymous tokens, never a login."""


class AccountJsonRequiredTests(AccountJsonCase):
    """--login required: every hostile body is a 4xx."""

    server_args = ("--login", "required")
    login_required = True


# ------------------------------------------------------- HTTP/1.0, pipelining

class ConnectionHandlingTests(SharedBadInputCase):

    def test_http10_without_keep_alive_is_answered_and_closed(self):
        for method, path in (("GET", JWKS_PATH), ("POST", AUTH_PATH)):
            with self.subTest(method=method):
                data = request_bytes(method, path, ["Content-Length: 0"],
                                     version="HTTP/1.0", host=False, close=False)
                result = self.send(data, linger=3.0)
                resp = result.response
                self.assertIsNotNone(resp, f"HTTP/1.0 {method}: {result.describe()}")
                self.assertEqual(resp.status, 200, resp.describe())
                self.assertNotEqual((resp.header("Connection") or "").lower(),
                                    "keep-alive", resp.describe())
                self.assertTrue(result.closed,
                                f"HTTP/1.0 without keep-alive: connection not closed "
                                f"within 3 s: {result.describe()}")
        self.assertStillServes("HTTP/1.0")

    def test_http10_keep_alive_serves_a_second_request(self):
        one = request_bytes("GET", JWKS_PATH, ["Connection: keep-alive"],
                            version="HTTP/1.0", close=False)
        sock = socket.create_connection((LOOPBACK, self.server.port), timeout=RAW_TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(one)
        first = self.read_responses(sock, 1)
        resp = first[0]
        self.assertEqual(resp.status, 200, resp.describe())
        connection = (resp.header("Connection") or "").lower()
        if connection != "keep-alive":
            # Closing is allowed; then the response must say so.
            self.assertEqual(connection, "close", resp.describe())
            return
        sock.sendall(request_bytes("POST", AUTH_PATH, ["Content-Length: 0"],
                                   version="HTTP/1.0", host=False, close=False))
        second = self.read_responses(sock, 1)
        self.assertTokenAnswer(second[0], "second HTTP/1.0 request on a kept-alive connection")

    def read_responses(self, sock, count):
        buf, out = b"", []
        deadline = time.monotonic() + RAW_TIMEOUT
        while len(out) < count and time.monotonic() < deadline:
            parsed = _parse_one(buf)
            if parsed:
                resp, buf = parsed
                out.append(resp)
                continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        self.assertEqual(len(out), count, f"wanted {count} responses, got {out}: {buf[:300]!r}")
        return out

    def test_pipelined_requests_are_all_answered_in_order(self):
        data = (request_bytes("GET", JWKS_PATH, close=False)
                + request_bytes("POST", AUTH_PATH, ["Content-Length: 0"], close=False)
                + request_bytes("GET", f"/{MARKER}", close=False)
                + request_bytes("POST", AUTH_PATH + "?expired=true",
                                ["Content-Length: 2"], body=b"{}"))
        result = self.send(data, expect=4, linger=2.0)
        self.assertEqual(len(result.responses), 4,
                         f"pipelined 4 requests: {result.describe()}")
        jwks, token, missing, expired = result.responses
        self.assertEqual(jwks.status, 200, jwks.describe())
        self.assertIn("keys", jwks.json())
        self.assertTokenAnswer(token, "pipelined POST /auth", expired=False)
        self.assertJsonError(missing, 404, "pipelined 404")
        self.assertTokenAnswer(expired, "pipelined POST /auth?expired=true", expired=True)
        self.assertNoEcho(result, "pipelined requests")
        self.assertTrue(result.closed, f"Connection: close not honoured: {result.describe()}")

    def test_pipelined_requests_with_bodies(self):
        body = json.dumps({"username": "userABC", "password": "password123"}).encode()
        one = request_bytes("POST", AUTH_PATH, ["Content-Type: application/json",
                                                f"Content-Length: {len(body)}"],
                            body=body, close=False)
        result = self.send(one + one + request_bytes("GET", JWKS_PATH), expect=3)
        self.assertEqual(len(result.responses), 3, result.describe())
        for resp in result.responses[:2]:
            self.assertTokenAnswer(resp, "pipelined POST with a body")
        self.assertEqual(result.responses[2].status, 200, result.responses[2].describe())


# ------------------------------------------------------- Host, chunked bodies

def chunked(body, step=100):
    """body in chunks of step bytes, with the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                    for i in range(0, len(body), step)) + b"0\r\n\r\n"


# CivetWeb 1.15 hands an absolute-form target ("GET http://host:port/path")
# to jwksd only when host is its authentication_domain (default
# "mydomain.com", which jwksd leaves alone) or below it, with the listener's
# port; any other closes the connection unanswered before jwksd sees it
# (PathVariantTests). These targets reach the screen.
CIVETWEB_DOMAIN = "mydomain.com"


class HostHeaderTests(SharedBadInputCase):
    """RFC 9112 3.2: one Host, equal to an absolute-form target's authority."""

    def test_two_host_headers_are_400_and_close(self):
        cases = [("a", "b"), (LOOPBACK, LOOPBACK), (LOOPBACK, "evil.example"),
                 (LOOPBACK, "")]
        for first, second in cases:
            for method, path in (("GET", JWKS_PATH), ("POST", AUTH_PATH)):
                what = f"{method} {path}, Host {first!r} and {second!r}"
                with self.subTest(what):
                    data = request_bytes(method, path,
                                         [f"Host: {first}", f"hOST: {second}",
                                          "Content-Length: 0"],
                                         host=False, close=False)
                    result = self.send(data, linger=3.0)
                    self.assertJsonErrorAnswer(result, what, statuses=(400,))
                    self.assertNotIn(b"token", result.raw)
                    self.assertTrue(result.closed, f"{what}: not closed: {result.describe()}")
        self.assertStillServes("two Host headers")

    def test_absolute_form_needs_host_equal_to_its_authority(self):
        authority = f"{CIVETWEB_DOMAIN}:{self.server.port}"
        mismatched = [f"{MARKER}.example", CIVETWEB_DOMAIN, f"{LOOPBACK}:{self.server.port}",
                      f"{CIVETWEB_DOMAIN}:{self.server.port}0", f"sub.{authority}",
                      f"{authority}."]
        for scheme in ("http", "https"):
            for method, path in (("GET", JWKS_PATH), ("POST", AUTH_PATH)):
                target = f"{scheme}://{authority}{path}"
                for host in mismatched:
                    what = f"{method} {target}, Host {host}"
                    with self.subTest(what):
                        data = request_bytes(method, target,
                                             [f"Host: {host}", "Content-Length: 0"],
                                             host=False, close=False)
                        result = self.send(data, linger=3.0)
                        self.assertJsonErrorAnswer(result, what, statuses=(400,))
                        self.assertNotIn(b"token", result.raw)
                        self.assertTrue(result.closed, f"{what}: {result.describe()}")
                what = f"{method} {target} without Host"
                with self.subTest(what):
                    result = self.send(request_bytes(method, target, ["Content-Length: 0"],
                                                     host=False))
                    self.assertJsonErrorAnswer(result, what, statuses=(400,))
        self.assertStillServes("absolute-form with another Host")

    def test_absolute_form_with_its_own_host_is_served(self):
        authority = f"{CIVETWEB_DOMAIN}:{self.server.port}"
        for host in (authority, authority.upper()):
            with self.subTest(host=host):
                result = self.send(request_bytes(
                    "GET", f"http://{authority}{JWKS_PATH}", [f"Host: {host}"], host=False))
                resp = result.response
                self.assertIsNotNone(resp, result.describe())
                self.assertEqual(resp.status, 200, resp.describe())
                self.assertGreaterEqual(len(jwks_kids(resp.json())), 1, resp.describe())
                result = self.send(request_bytes(
                    "POST", f"http://{authority}{AUTH_PATH}?expired=true",
                    [f"Host: {host}", "Content-Length: 0"], host=False))
                self.assertIsNotNone(result.response, result.describe())
                self.assertTokenAnswer(result.response, f"absolute-form POST, Host {host}",
                                       expired=True)


class ChunkedBodyCapTests(SharedBadInputCase):
    """--max-body 1K: chunked bodies count against it like Content-Length."""

    server_args = ("--max-body", "1K")
    CAP = 1024

    # Every route, and a path that is none (the body is refused before any
    # route runs).
    ROUTES = [("GET", JWKS_PATH), ("HEAD", JWKS_PATH), ("POST", AUTH_PATH),
              ("POST", REGISTER_PATH), ("GET", "/healthz"), ("GET", "/readyz"),
              ("POST", f"/{MARKER}"), ("PUT", AUTH_PATH)]

    def test_chunked_body_over_the_cap_is_413_and_closes_on_every_route(self):
        # The body holds a request, and another one follows it: neither may
        # be answered.
        inner = request_bytes("POST", AUTH_PATH + "?expired=true", ["Content-Length: 0"],
                              close=False)
        body = inner + b"x" * (self.CAP + 1 - len(inner))
        after = request_bytes("GET", "/healthz")
        for method, path in self.ROUTES:
            for step in (self.CAP + 1, 100, 1):
                what = f"{method} {path}, {len(body)} bytes in chunks of {step}"
                with self.subTest(what):
                    data = request_bytes(method, path, ["Transfer-Encoding: chunked"],
                                         body=chunked(body, step), close=False) + after
                    result = self.send(data, expect=2, linger=3.0,
                                       head_only=method == "HEAD")
                    self.assertGreaterEqual(len(result.responses), 1, result.describe())
                    resp = result.responses[0]
                    self.assertEqual(resp.status, 413, f"{what}: {resp.describe()}")
                    if method != "HEAD":
                        self.assertJsonErrorAnswer(result, what, statuses=(413,))
                    self.assertEqual((resp.header("Connection") or "").lower(), "close",
                                     resp.describe())
                    self.assertEqual(len(result.responses), 1,
                                     f"{what}: bytes after a refused body were answered: "
                                     f"{result.describe()}")
                    self.assertNotIn(b"token", result.raw)
                    self.assertNotIn(b'"ok"', result.raw)
                    self.assertTrue(result.closed, f"{what}: not closed: {result.describe()}")
        self.assertStillServes("chunked bodies over the cap")

    def test_endless_chunked_body_is_cut_off(self):
        # A client that never ends its body: 413 once the cap is passed and
        # the connection closed while it is still sending, on a route that
        # reads bodies and on routes that do not.
        for method, path in (("POST", AUTH_PATH), ("POST", REGISTER_PATH),
                             ("GET", JWKS_PATH)):
            with self.subTest(f"{method} {path}"):
                self.assertEndlessBodyRefused(method, path)
        self.assertStillServes("endless chunked bodies")

    def assertEndlessBodyRefused(self, method, path, seconds=15.0):
        sock = socket.create_connection((LOOPBACK, self.server.port), timeout=RAW_TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(request_bytes(method, path, ["Transfer-Encoding: chunked"],
                                   close=False))
        piece = b"%x\r\n%s\r\n" % (512, b"z" * 512)
        stop = threading.Event()
        sent = [0]

        def feed():
            while not stop.is_set():
                try:
                    sock.sendall(piece)
                except OSError:
                    return
                sent[0] += len(piece)
                time.sleep(0.005)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        buf, closed = b"", False
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                buf += chunk
        finally:
            stop.set()
            feeder.join(5)
        what = f"{method} {path} with an endless chunked body ({sent[0]} bytes sent)"
        parsed = _parse_one(buf)
        self.assertIsNotNone(parsed, f"{what}: no complete answer: {buf[:300]!r}")
        self.assertEqual(parsed[0].status, 413, f"{what}: {parsed[0].describe()}")
        self.assertTrue(closed, f"{what}: still open after {seconds} s")

    def test_chunked_body_at_the_cap_is_read(self):
        body = b"{" + b" " * (self.CAP - 2) + b"}"
        for step in (self.CAP, 7):
            with self.subTest(step=step):
                data = request_bytes("POST", AUTH_PATH, ["Transfer-Encoding: chunked",
                                                         "Content-Type: application/json"],
                                     body=chunked(body, step))
                result = self.send(data)
                self.assertIsNotNone(result.response, result.describe())
                self.assertTokenAnswer(result.response, f"a 1 KiB chunked body, chunks of {step}")

    def test_malformed_chunks_are_400_and_close(self):
        bodies = [b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n" + b"x" * 10,
                  b"-1\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\nabc\r\n"]
        for body in bodies:
            with self.subTest(body=body[:20]):
                data = request_bytes("POST", AUTH_PATH, ["Transfer-Encoding: chunked"],
                                     body=body, close=False)
                result = self.send(data, linger=3.0)
                self.assertIsNotNone(result.response, result.describe())
                self.assertIn(result.response.status, (400, 413), result.describe())
                self.assertJsonErrorAnswer(result, f"chunks {body[:20]!r}",
                                           statuses=(400, 413))
                self.assertTrue(result.closed, result.describe())
        self.assertStillServes("malformed chunks")

    def test_chunked_body_under_the_cap_then_a_pipelined_request(self):
        # The body (which looks like a request) is read as a body, and the
        # request after it is the next one.
        body = request_bytes("GET", f"/{MARKER}", close=False)
        for method, path in (("GET", JWKS_PATH), ("POST", AUTH_PATH)):
            with self.subTest(f"{method} {path}"):
                data = (request_bytes(method, path, ["Transfer-Encoding: chunked"],
                                      body=chunked(body, 9), close=False)
                        + request_bytes("GET", "/healthz"))
                result = self.send(data, expect=3, linger=3.0)
                self.assertEqual(len(result.responses), 2, result.describe())
                first, second = result.responses
                self.assertEqual(first.status, 200, first.describe())
                self.assertEqual(second.status, 200, second.describe())
                self.assertEqual(second.json(), {"status": "ok"}, second.describe())
                self.assertNoEcho(result, f"{method} {path}")

    def test_chunked_register_and_login(self):
        name = f"chunky{int(time.time() * 1000) % 10**9}"
        body = json.dumps({"username": name}).encode()
        result = self.send(request_bytes("POST", REGISTER_PATH,
                                         ["Transfer-Encoding: chunked",
                                          "Content-Type: application/json"],
                                         body=chunked(body, 5)))
        resp = result.response
        self.assertIsNotNone(resp, result.describe())
        self.assertEqual(resp.status, 201, resp.describe())
        password = resp.json()["password"]
        creds = json.dumps({"username": name, "password": password}).encode()
        result = self.send(request_bytes("POST", AUTH_PATH,
                                         ["Transfer-Encoding: chunked",
                                          "Content-Type: application/json"],
                                         body=chunked(creds, 3)))
        self.assertIsNotNone(result.response, result.describe())
        token = self.assertTokenAnswer(result.response, "chunked credentials")
        self.assertEqual(split_jwt(token)[1].get("preferred_username"), name)
        # The control: the wrong password in the same framing gets no login.
        bad = json.dumps({"username": name, "password": password + "x"}).encode()
        result = self.send(request_bytes("POST", AUTH_PATH,
                                         ["Transfer-Encoding: chunked",
                                          "Content-Type: application/json"],
                                         body=chunked(bad, 3)))
        self.assertIsNotNone(result.response, result.describe())
        self.assertEqual(result.response.status, 401, result.response.describe())


if __name__ == "__main__":
    unittest.main()
