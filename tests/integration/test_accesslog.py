"""The access log (--access-log PATH, or - for stderr) of the real jwksd.

Run once, on SQLite: the log does not depend on the backend.

Every request of the public listener appears exactly once, as one JSON
object per line with the documented fields (query NAMES only, never their
values; kid equal to the signed token's header; bytes equal to the body
length); `-` writes the lines to stderr; SIGHUP after a rename makes new
lines go to a new file and none is lost; a FIFO nobody reads as the log
neither blocks the start nor the answers (a flood still answers 200 every
time), the drops are reported on stderr and the server stops promptly.

The only time bounds are hang guards (how long a test waits for something
to happen), never speed targets.
"""

import calendar
import concurrent.futures
import http.client
import json
import os
import re
import signal
import stat
import threading
import time

from harness import (
    AUTH_PATH, HTTP_TIMEOUT, JWKS_PATH, LOOPBACK, JwksdTestCase, free_port,
    http_request,
    parse_raw_response, raw_exchange, run_jwksd, split_jwt,
)

TIME_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
KEYS = ["time", "client", "method", "path", "query", "status", "bytes",
        "duration_us", "kid"]
DROPPED_RE = re.compile(r"^jwksd: access log: (\d+) lines dropped \(queue full\)$",
                        re.M)
UNWRITTEN_RE = re.compile(r"^jwksd: access log: (\d+) lines not written", re.M)
WAIT = 20.0  # hang guard for things the writer thread does


def parse_lines(text, what):
    """The JSON objects of a log, one per line; raises on anything else."""
    entries = []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"{what} line {number} is not JSON ({exc}): "
                                 f"{line!r}") from None
        if not isinstance(entry, dict):
            raise AssertionError(f"{what} line {number}: not an object: {line!r}")
        entries.append(entry)
    if text and not text.endswith("\n"):
        raise AssertionError(f"{what} ends in a partial line: {text[-200:]!r}")
    return entries


def read_log(path):
    with open(path, "rb") as f:
        return parse_lines(f.read().decode("utf-8"), str(path))


def line_count(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return -1


class AccessLogTestCase(JwksdTestCase):

    wait_timeout = WAIT

    def by_marker(self, entries):
        """{marker: [entries]} for entries whose first query name is a
        marker r<N> (every request of these tests carries one)."""
        found = {}
        for entry in entries:
            names = entry.get("query") or []
            if names and re.fullmatch(r"r\d+", names[0]):
                found.setdefault(names[0], []).append(entry)
        return found

    def assertEntryShape(self, entry):
        keys = [k for k in KEYS if k in entry]
        self.assertEqual(list(entry), keys,
                         f"members in the documented order, nothing else: {entry}")
        for key in ("time", "client", "method", "path", "status", "bytes",
                    "duration_us"):
            self.assertIn(key, entry, f"{key} always present: {entry}")
        self.assertRegex(entry["time"], TIME_RE)
        self.assertEqual(entry["client"], LOOPBACK, entry)
        for key in ("status", "bytes", "duration_us"):
            self.assertIs(type(entry[key]), int, f"{key} an integer: {entry}")
            self.assertGreaterEqual(entry[key], 0, entry)
        if "query" in entry:
            self.assertIsInstance(entry["query"], list, entry)
            self.assertTrue(entry["query"], f"an empty query list is omitted: {entry}")
        if "kid" in entry:
            self.assertRegex(entry["kid"], r"\A[1-9][0-9]*\Z", entry)


class AccessLogFileTests(AccessLogTestCase):

    def test_every_request_once_with_its_fields(self):
        log = self.tmp / "access.log"
        server = self.start_server("--access-log", log)
        started = time.time()
        expected = {}  # marker -> (method, path, status, bytes, kid or None)

        def record(marker, method, path, resp, kid=None):
            expected[marker] = (method, path, resp.status, len(resp.body), kid)

        resp, token = self.post_auth(server, "r1=secretvalue1")
        record("r1", "POST", AUTH_PATH, resp, split_jwt(token)[0]["kid"])
        resp, token = self.post_auth(server, "r2=secretvalue2&expired=true")
        expired_kid = split_jwt(token)[0]["kid"]
        record("r2", "POST", AUTH_PATH, resp, expired_kid)
        resp = self.request(server, "GET", JWKS_PATH + "?r3=secretvalue3")
        self.assertEqual(resp.status, 200, resp.describe())
        self.assertGreater(len(resp.body), 0)
        record("r3", "GET", JWKS_PATH, resp)
        etag = resp.header("ETag")
        resp = self.request(server, "GET", JWKS_PATH + "?r4=secretvalue4",
                            headers={"If-None-Match": etag})
        self.assertEqual(resp.status, 304, resp.describe())
        record("r4", "GET", JWKS_PATH, resp)
        resp = self.request(server, "HEAD", JWKS_PATH + "?r5=secretvalue5")
        self.assertEqual(resp.status, 200, resp.describe())
        record("r5", "HEAD", JWKS_PATH, resp)  # HEAD: no body, bytes 0
        resp = self.request(server, "GET", "/no/such/path?r6=secretvalue6")
        self.assertEqual(resp.status, 404, resp.describe())
        record("r6", "GET", "/no/such/path", resp)
        resp = self.request(server, "PUT", AUTH_PATH + "?r7=secretvalue7", body=b"")
        self.assertEqual(resp.status, 405, resp.describe())
        record("r7", "PUT", AUTH_PATH, resp)
        # Hostile bytes in the path: a quote, a backslash, an escaped NUL
        # (kept as sent).
        raw_path = b'/x"y\\z%00'
        data, _ = raw_exchange(server.port, b"GET " + raw_path +
                               b"?r8=secretvalue8&n%22=v HTTP/1.1\r\nHost: a\r\n"
                               b"Connection: close\r\n\r\n")
        status, _, body = parse_raw_response(data)
        expected["r8"] = ("GET", raw_path.decode("latin-1"), status, len(body), None)
        # Several names, values never logged.
        resp, token = self.post_auth(server, "r9=secretvalue9&alg=RS256&&flag")
        record("r9", "POST", AUTH_PATH, resp, split_jwt(token)[0]["kid"])
        # A request line CivetWeb cannot parse (a byte over 0x7F): 400,
        # logged without method and path, so that none of its bytes (here
        # a credential in a header) reaches the log.
        data, _ = raw_exchange(server.port, b"GET /x\xff?r10=secretvalue10 HTTP/1.1\r\n"
                               b"Authorization: Bearer secretvalue11\r\n"
                               b"Host: a\r\nConnection: close\r\n\r\n")
        status, _, body = parse_raw_response(data)
        self.assertEqual(status, 400, data)
        unparsed = ("", "", status, len(body), None)
        finished = time.time()

        self.stop_server(server)
        text = log.read_bytes().decode("utf-8")
        self.assertNotIn("secretvalue", text, "query values are never logged")
        entries = read_log(log)
        self.assertEqual(len(entries), len(expected) + 1,
                         f"one line per request, no other: {text}")
        found = self.by_marker(entries)
        rest = [e for e in entries if not e.get("query")]
        self.assertEqual(len(rest), 1, f"the unparsable request, once: {text}")
        self.assertEntryShape(rest[0])
        self.assertEqual((rest[0]["method"], rest[0]["path"], rest[0]["status"],
                          rest[0]["bytes"], rest[0].get("kid")), unparsed, rest[0])
        for marker, (method, path, status, nbytes, kid) in expected.items():
            self.assertEqual(len(found.get(marker, [])), 1,
                             f"request {marker} logged exactly once: {text}")
            entry = found[marker][0]
            self.assertEntryShape(entry)
            self.assertEqual(entry["method"], method, entry)
            self.assertEqual(entry["path"], path, entry)
            self.assertEqual(entry["status"], status, entry)
            self.assertEqual(entry["bytes"], nbytes, f"bytes = body length: {entry}")
            self.assertEqual(entry.get("kid"), kid,
                             f"kid as in the token's header (none without one): {entry}")
            when = calendar.timegm(time.strptime(entry["time"][:19],
                                                 "%Y-%m-%dT%H:%M:%S"))
            self.assertGreaterEqual(when, int(started) - 2, entry)
            self.assertLessEqual(when, finished + 2, entry)
        self.assertEqual(found["r2"][0]["query"], ["r2", "expired"])
        self.assertEqual(found["r8"][0]["query"], ["r8", "n%22"])
        self.assertEqual(found["r9"][0]["query"], ["r9", "alg", "flag"])
        # A regular file is created at start with mode 0640 (umask 022).
        self.assertEqual(stat.S_IMODE(log.stat().st_mode), 0o640)

    def test_stderr(self):
        server = self.start_server("--access-log", "-")
        self.post_auth(server, "r1=v")
        for i in range(2, 5):
            resp = self.request(server, "GET", f"{JWKS_PATH}?r{i}=v")
            self.assertEqual(resp.status, 200, resp.describe())
        self.stop_server(server)
        lines = [line for line in server.stderr_text().splitlines()
                 if line.startswith("{")]
        entries = parse_lines("".join(line + "\n" for line in lines), "stderr")
        found = self.by_marker(entries)
        self.assertEqual(sorted(found), ["r1", "r2", "r3", "r4"],
                         f"each request on stderr: {server.stderr_text()}")
        for marker, group in found.items():
            self.assertEqual(len(group), 1, f"{marker} once")
            self.assertEntryShape(group[0])
        self.assertIn("kid", found["r1"][0])

    def test_sighup_reopens_after_rename(self):
        log = self.tmp / "access.log"
        rotated = self.tmp / "access.log.1"
        server = self.start_server("--access-log", log)
        for i in range(20):
            resp = self.request(server, "GET", f"{JWKS_PATH}?r{i}=v")
            self.assertEqual(resp.status, 200, resp.describe())
        self.wait_for("the first 20 lines", lambda: line_count(log) == 20)

        # Requests keep coming across the rotation, from another thread.
        stop = threading.Event()
        during = []

        def traffic():
            n = 100000
            while not stop.is_set():
                resp = server.request("GET", f"{JWKS_PATH}?r{n}=v")
                if resp.status == 200:
                    during.append(f"r{n}")
                n += 1

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(0.2)
            os.rename(log, rotated)
            os.kill(server.proc.pid, signal.SIGHUP)
            self.wait_for("the new file after SIGHUP", log.exists)
            time.sleep(0.2)
        finally:
            stop.set()
            worker.join(timeout=HTTP_TIMEOUT)
        self.assertTrue(during, "requests were made during the rotation")
        after = []
        for i in range(2000, 2020):
            resp = self.request(server, "GET", f"{JWKS_PATH}?r{i}=v")
            self.assertEqual(resp.status, 200, resp.describe())
            after.append(f"r{i}")
        self.assertTrue(server.running, "SIGHUP does not stop the server")
        self.stop_server(server)

        old_entries = read_log(rotated)
        new_entries = read_log(log)
        old = self.by_marker(old_entries)
        new = self.by_marker(new_entries)
        for i in range(20):
            self.assertEqual(len(old.get(f"r{i}", [])), 1,
                             f"r{i}: in the renamed file, once")
            self.assertNotIn(f"r{i}", new)
        for marker in during:
            self.assertEqual(len(old.get(marker, [])) + len(new.get(marker, [])), 1,
                             f"{marker} (during the rotation): in one file, once")
        for marker in after:
            self.assertEqual(len(new.get(marker, [])), 1,
                             f"{marker} (after): in the new file, once")
            self.assertNotIn(marker, old)
        self.assertEqual(len(old_entries) + len(new_entries),
                         20 + len(during) + len(after), "no other line")
        self.assertEqual(stat.S_IMODE(log.stat().st_mode), 0o640,
                         "the new file has mode 0640 (umask 022)")
        self.assertNotIn("access log: cannot", server.stderr_text())

    def test_bad_path_is_a_start_error(self):
        path = self.tmp / "no" / "such" / "dir" / "access.log"
        result = run_jwksd(["--listen", f"{LOOPBACK}:0", "--db",
                            str(self.tmp / "store.db"), "--access-log", str(path)],
                           cwd=self.tmp)
        self.assertEqual(result.returncode, 1, result.describe())
        self.assertIn(str(path), result.stderr, result.describe())
        self.assertIn("No such file or directory", result.stderr, result.describe())
        self.assertFalse((self.tmp / "store.db").exists(),
                         "the log is checked before the store is touched")
        result = run_jwksd(["--access-log", ""], cwd=self.tmp)
        self.assertEqual(result.returncode, 2, result.describe())


class AccessLogFifoTests(AccessLogTestCase):

    FLOOD = 3000
    CLIENTS = 8

    def test_fifo_nobody_reads(self):
        fifo = self.tmp / "access.fifo"
        os.mkfifo(fifo, 0o600)
        admin_port = free_port()
        server = self.start_server("--access-log", fifo,  # start not blocked
                                   "--admin-listen", str(admin_port))

        def client(first):
            statuses = []
            conn = http.client.HTTPConnection(LOOPBACK, server.port,
                                              timeout=HTTP_TIMEOUT)
            try:
                for i in range(first, self.FLOOD, self.CLIENTS):
                    try:
                        conn.request("GET", f"{JWKS_PATH}?r{i}=v")
                        resp = conn.getresponse()
                        resp.read()
                    except (OSError, http.client.HTTPException):
                        # The server closed a kept-alive connection: a new one.
                        conn.close()
                        conn = http.client.HTTPConnection(
                            LOOPBACK, server.port, timeout=HTTP_TIMEOUT)
                        conn.request("GET", f"{JWKS_PATH}?r{i}=v")
                        resp = conn.getresponse()
                        resp.read()
                    statuses.append(resp.status)
            finally:
                conn.close()
            return statuses

        with concurrent.futures.ThreadPoolExecutor(self.CLIENTS) as pool:
            results = list(pool.map(client, range(self.CLIENTS)))
        statuses = [s for r in results for s in r]
        self.assertEqual(len(statuses), self.FLOOD)
        self.assertEqual(set(statuses), {200},
                         "every answer 200 with the log stuck")
        # The drops are counted in the metrics too (the admin listener's
        # requests are not logged, so none of them is dropped).
        metrics = http_request(admin_port, "GET", "/metrics")
        self.assertEqual(metrics.status, 200, metrics.describe())
        counted = re.search(rb"^jwksd_access_log_dropped_total (\d+)$",
                            metrics.body, re.M)
        self.assertIsNotNone(counted, metrics.body[:2000])
        self.assertGreater(int(counted.group(1)), 0)
        self.assertLessEqual(int(counted.group(1)), self.FLOOD)
        # Stopping must not hang on the writer (Server.stop: a hang guard).
        self.stop_server(server)
        err = server.stderr_text()
        dropped = sum(int(n) for n in DROPPED_RE.findall(err))
        unwritten = sum(int(n) for n in UNWRITTEN_RE.findall(err))
        self.assertGreater(dropped, 0, f"drops reported on stderr: {err}")
        self.assertEqual(dropped + unwritten, self.FLOOD,
                         f"every line is either dropped or reported unwritten: {err}")
