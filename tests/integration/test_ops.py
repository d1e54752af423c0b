"""Operations (issue 13) against the real binary: the probes on the public
listener, the admin listener (--admin-listen) with its Prometheus /metrics,
/keys.json and the timeline page's headers, and --stale-after.

Backend-generic (env KS_TEST_BACKEND) except the store faults behind
/readyz: PostgreSQL is a server of the test's own (tests/pg/pgserver.py),
stopped and started again; SQLite's store is in WAL mode, where a writer
never blocks a reader, so another process takes every WAL read-mark lock
(fcntl locks on bytes 123..127 of the -shm file, the locks SQLite's unix
VFS takes): jwksd's background check (PRAGMA data_version) then cannot
begin a read transaction and waits in SQLite's retry loop until the locks
are gone (or fails with SQLITE_PROTOCOL after about 10 s). LMDB has no
such fault here: its readers never block.

/metrics is parsed with Prometheus's own text parser (Debian's
python3-prometheus-client) and linted with `promtool check metrics` (the
prometheus package): both are in scripts/dev's TEST_PKGS; a missing one
fails the test saying so.

The timeline page itself is tested in a browser elsewhere; here only its
headers.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest
from pathlib import Path

from harness import (
    AUTH_PATH, BACKEND, JWKS_PATH, LOOPBACK, PRIVATE_JWK_MEMBERS,
    JwksdTestCase, PgStore, db_args, http_request, parse_raw_response,
    pgserver, run_jwksd,
)

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # reported by the tests that need it
    text_string_to_metric_families = None

PUBLIC_ROUTES = (AUTH_PATH, JWKS_PATH, "/healthz", "/readyz", "/register")
ADMIN_ROUTES = ("/metrics", "/keys.json")
KEY_STATES = ("pending", "active", "retired", "expired", "revoked")
STALE_AFTER = 2          # --stale-after for the store-fault tests, seconds
FAULT_WAIT = 60.0        # upper bound on waits for /readyz to change
SETTLE_WAIT = 10.0       # upper bound on the wait for answers to be counted
ADMIN_LINE = re.compile(r"admin on ([0-9.]+):([0-9]+)")
PRIVATE_TEXT = re.compile(r"-----BEGIN|PRIVATE KEY", re.I)

# Takes every WAL read-mark lock of an SQLite store (argv[1]), says "held",
# and keeps them until its stdin closes.
SHM_LOCK_HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
# WALINDEX_LOCK_OFFSET 120 + WAL_READ_LOCK(0..4) = bytes 123..127.
fcntl.lockf(fd, fcntl.LOCK_EX, 5, 123, os.SEEK_SET)
print("held", flush=True)
sys.stdin.read()
"""


def sample_key(name, labels=None):
    return (name, tuple(sorted((labels or {}).items())))


class Scrape:
    """One /metrics body, parsed with prometheus_client's parser."""

    def __init__(self, text):
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = {}
        self.duplicates = []
        for fam in self.families:
            for s in fam.samples:
                key = sample_key(s.name, s.labels)
                if key in self.samples:
                    self.duplicates.append(key)
                self.samples[key] = s.value

    def get(self, name, **labels):
        """The value of a sample; 0 for a labelled counter sample not shown
        yet (jwksd shows a route and code only once it was counted)."""
        return self.samples.get(sample_key(name, labels), 0.0)

    def has(self, name, **labels):
        return sample_key(name, labels) in self.samples

    def family(self, name):
        for fam in self.families:
            if fam.name == name:
                return fam
        return None

    def with_name(self, name):
        """{labels tuple: value} of every sample called name."""
        return {k[1]: v for k, v in self.samples.items() if k[0] == name}


def listening_sockets(pid):
    """{(address, port)} of the TCP sockets process pid listens on (from
    /proc/net/tcp and tcp6, matched to its file descriptors' inodes)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            raw = bytes.fromhex(hexaddr)
            if width == 8:
                addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = socket.inet_ntop(socket.AF_INET6, words)
            found.add((addr, int(hexport, 16)))
    return found


def proc_start_time(pid):
    """The start time of process pid, seconds since the epoch, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            btime = int(line.split()[1])
    return btime + start_ticks / os.sysconf("SC_CLK_TCK")


def find_private(obj, path="$"):
    """Paths in a parsed JSON value where a private JWK member appears."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in PRIVATE_JWK_MEMBERS:
                found.append(f"{path}.{k}")
            found += find_private(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += find_private(v, f"{path}[{i}]")
    elif isinstance(obj, str) and PRIVATE_TEXT.search(obj):
        found.append(path)
    return found


class OpsCase(JwksdTestCase):
    """Servers with the admin listener on an ephemeral loopback port."""

    def start_ops(self, *args, admin="0", **kwargs):
        server = self.start_server("--admin-listen", admin, *args, **kwargs)
        server.admin_host, server.admin_port = self.admin_address(server)
        return server

    def admin_address(self, server, timeout=30.0):
        """(address, port) of the admin listener from the start line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = ADMIN_LINE.search(server.stderr_text())
            if m:
                return m.group(1), int(m.group(2))
            if not server.running:
                break
            time.sleep(0.02)
        self.failure(f"no 'admin on ADDR:PORT' in the start line within {timeout} s")

    # Every answer a test got is counted, so that a scrape can wait until
    # jwksd counted them too: a request is counted when its answer has been
    # sent (its duration ends there), so a client may hold the answer a
    # moment before the count moves.

    def request(self, server, method, path, body=None, headers=None, timeout=30.0):
        resp = super().request(server, method, path, body, headers, timeout)
        server.answered = getattr(server, "answered", 0) + 1
        return resp

    def admin(self, server, method, path, body=None, headers=None):
        try:
            resp = http_request(server.admin_port, method, path, body, headers,
                                host=server.admin_host)
        except (OSError, http.client.HTTPException) as exc:
            self.failure(f"admin {method} {path} failed: {exc!r}")
        server.answered = getattr(server, "answered", 0) + 1
        return resp

    def scrape(self, server):
        """GET /metrics: 200, the 0.0.4 content type, parsed and linted."""
        if text_string_to_metric_families is None:
            self.failure("python3-prometheus-client is not installed "
                         "(scripts/dev test installs it)")
        deadline = time.monotonic() + SETTLE_WAIT
        while True:
            answered = getattr(server, "answered", 0)
            scrapes = getattr(server, "scrapes", 0)
            resp = self.admin(server, "GET", "/metrics")
            server.scrapes = scrapes + 1
            self.assertEqual(resp.status, 200, resp.describe())
            ctype = (resp.header("Content-Type") or "").replace(" ", "").lower()
            self.assertTrue(ctype.startswith("text/plain;version=0.0.4"),
                            f"Content-Type {resp.header('Content-Type')!r}")
            text = resp.body.decode("utf-8")
            try:
                scrape = Scrape(text)
            except ValueError as exc:
                self.failure(f"/metrics does not parse ({exc}):\n{text}")
            self.assertEqual(scrape.duplicates, [], f"samples shown twice:\n{text}")
            # Every answer this test got is counted (this one is not yet).
            counted = sum(scrape.with_name("jwksd_http_requests_total").values())
            if counted > answered:
                self.failure(f"{counted} requests counted, {answered} answered:\n{text}")
            if counted == answered:
                scrape.scrapes_before = scrapes
                return scrape
            if time.monotonic() > deadline:
                self.failure(f"{counted} requests counted {SETTLE_WAIT} s after "
                             f"{answered} were answered:\n{text}")
            time.sleep(0.05)

    def promtool(self, text):
        tool = shutil.which("promtool")
        if tool is None:
            self.failure("promtool is not installed (Debian's prometheus "
                         "package; scripts/dev test installs it)")
        res = subprocess.run([tool, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=60)
        findings = (res.stdout + res.stderr).decode(errors="replace").strip()
        self.assertEqual((res.returncode, findings), (0, ""),
                         f"promtool check metrics:\n{findings}\n--- body ---\n{text}")

    def keys_list_json(self, server):
        res = run_jwksd(["keys", "list", "--json", "--backend", BACKEND,
                         *db_args(server.db)], cwd=self.tmp, timeout=60)
        self.assertEqual(res.returncode, 0, res.describe())
        return json.loads(res.stdout)

    def readyz(self, server, timeout=10.0):
        return self.request(server, "GET", "/readyz", timeout=timeout)

    def wait_readyz(self, server, status, what, limit=FAULT_WAIT, while_waiting=None):
        """Poll /readyz until it answers status; returns that answer."""
        deadline = time.monotonic() + limit
        seen = []
        while True:
            resp = self.readyz(server)
            if resp.status == status:
                return resp
            seen.append(resp.status)
            if while_waiting:
                while_waiting()
            if time.monotonic() > deadline:
                self.failure(f"{what}: /readyz did not answer {status} within "
                             f"{limit} s (saw {sorted(set(seen))}, last "
                             f"{resp.describe()})")
            time.sleep(0.1)

    def assertServesFromMemory(self, server, what):
        """A token and the key set still come (200) while the store is out."""
        resp = self.request(server, "POST", AUTH_PATH, timeout=10)
        self.assertEqual(resp.status, 200, f"{what}: POST /auth {resp.describe()}")
        resp = self.request(server, "GET", JWKS_PATH, timeout=10)
        self.assertEqual(resp.status, 200, f"{what}: GET JWKS {resp.describe()}")
        self.assertTrue(resp.json()["keys"], f"{what}: empty key set")

    def assertNotReadyStale(self, resp, what):
        self.assertEqual(resp.status, 503, f"{what}: {resp.describe()}")
        self.assertJsonContentType(resp, what)
        self.assertEqual(resp.json(), {"status": "not ready",
                                       "reason": "key store unreachable"},
                         f"{what}: {resp.describe()}")

    def assertReady(self, resp, what):
        self.assertEqual(resp.status, 200, f"{what}: {resp.describe()}")
        self.assertJsonContentType(resp, what)
        self.assertEqual(resp.json(), {"status": "ready"}, f"{what}: {resp.describe()}")


# ------------------------------------------------------------------ probes

class ProbeTests(OpsCase):

    def test_healthz_and_readyz_get_head_and_other_methods(self):
        server = self.start_ops()
        resp = self.request(server, "GET", "/healthz")
        self.assertEqual(resp.status, 200, resp.describe())
        self.assertJsonContentType(resp, "GET /healthz")
        self.assertEqual(resp.json(), {"status": "ok"}, resp.describe())
        self.assertReady(self.wait_readyz(server, 200, "a fresh server"), "GET /readyz")
        for path in ("/healthz", "/readyz"):
            with self.subTest(path=path, method="HEAD"):
                get = self.request(server, "GET", path)
                head = self.request(server, "HEAD", path)
                self.assertEqual(head.status, 200, head.describe())
                self.assertEqual(head.body, b"", head.describe())
                self.assertEqual(head.header("Content-Length"),
                                 get.header("Content-Length"), head.describe())
            for method in ("POST", "PUT", "DELETE"):
                with self.subTest(path=path, method=method):
                    resp = self.request(server, method, path, body=b"{}",
                                        headers={"Content-Type": "application/json"})
                    self.assertJsonError(resp, 405, f"{method} {path}")
                    allow = {m.strip() for m in (resp.header("Allow") or "").split(",")}
                    self.assertEqual(allow, {"GET", "HEAD"}, resp.describe())
            with self.subTest(path=path, what="no caching"):
                self.assertIn("no-store", get.header("Cache-Control") or "", get.describe())

    def test_readyz_is_503_while_shutting_down(self):
        """SIGTERM while a request is in flight: jwksd drains, answering new
        requests (the probe too) 503 "shutting down", and still finishes the
        request in flight."""
        server = self.start_ops("--request-timeout", "20000")
        self.assertReady(self.wait_readyz(server, 200, "before SIGTERM"), "before")
        body = b'{"a": 1}'
        slow = socket.create_connection((LOOPBACK, server.port), timeout=30)
        self.addCleanup(slow.close)
        slow.sendall(b"POST /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:2])
        # Give a worker the time to take the request (a wait, not a bound:
        # if it had not begun, it would be answered 503 below and say so).
        time.sleep(1.0)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = server.request("GET", "/readyz", timeout=5)
            except OSError as exc:
                self.failure(f"/readyz refused ({exc!r}) before it answered 503: "
                             f"the drain ended while a request was in flight")
            if resp.status == 503:
                break
            self.assertEqual(resp.status, 200, resp.describe())
            if time.monotonic() > deadline:
                self.failure(f"/readyz still {resp.status} 10 s after SIGTERM")
            time.sleep(0.02)
        self.assertJsonContentType(resp, "/readyz while draining")
        self.assertEqual(resp.json(), {"error": "shutting down"}, resp.describe())
        self.assertEqual(resp.header("Retry-After"), "1", resp.describe())
        health = server.request("GET", "/healthz", timeout=5)
        self.assertEqual(health.status, 503, f"/healthz while draining: {health.describe()}")
        # The request in flight completes with its token.
        slow.sendall(body[2:])
        data = b""
        while True:
            chunk = slow.recv(65536)
            if not chunk:
                break
            data += chunk
        status, _, payload = parse_raw_response(data)
        self.assertEqual(status, 200, f"the request in flight: {data[:400]!r}")
        self.assertIn("token", json.loads(payload), payload)
        proc = server.proc
        self.assertEqual(proc.wait(timeout=20), 0, server.context())
        server.proc = None
        server._close_files()


# ------------------------------------------------------- store faults

class PostgresOutageTests(OpsCase):

    @unittest.skipUnless(BACKEND == "postgres", "PostgreSQL outage: postgres only")
    def test_readyz_follows_a_stopped_and_restarted_postgresql(self):
        pg = pgserver.PgServer(label="ops")
        self.addCleanup(pg.remove)
        pg.start()
        store = PgStore("jwksd_ops", conninfo=pg.conninfo)
        server = self.start_ops("--stale-after", str(STALE_AFTER), db=store)
        self.assertReady(self.wait_readyz(server, 200, "PostgreSQL up"), "up")
        before = self.scrape(server)
        self.assertEqual(before.get("jwksd_ready"), 1.0, before.text)

        pg.stop(mode="fast")
        resp = self.wait_readyz(server, 503, "PostgreSQL stopped",
                                while_waiting=lambda: self.assertServesFromMemory(
                                    server, "PostgreSQL stopped, not yet stale"))
        self.assertNotReadyStale(resp, "PostgreSQL stopped")
        self.assertServesFromMemory(server, "PostgreSQL stopped")
        down = self.scrape(server)
        self.assertEqual(down.get("jwksd_ready"), 0.0, down.text)
        self.assertGreater(down.get("jwksd_store_errors_total", op="check"),
                           before.get("jwksd_store_errors_total", op="check"),
                           f"no failed store check counted:\n{down.text}")
        self.assertGreater(down.get("jwksd_store_sync_age_seconds"), STALE_AFTER,
                           down.text)

        pg.start()
        self.assertReady(self.wait_readyz(server, 200, "PostgreSQL restarted"),
                         "PostgreSQL restarted")
        self.assertServesFromMemory(server, "PostgreSQL restarted")
        up = self.scrape(server)
        self.assertEqual(up.get("jwksd_ready"), 1.0, up.text)
        self.assertLessEqual(up.get("jwksd_store_sync_age_seconds"), STALE_AFTER, up.text)
        self.assertGreaterEqual(up.get("jwksd_store_errors_total", op="check"),
                                down.get("jwksd_store_errors_total", op="check"))


class SqliteLockTests(OpsCase):

    @unittest.skipUnless(BACKEND == "sqlite", "the SQLite WAL locks: sqlite only")
    def test_readyz_follows_a_store_whose_read_locks_are_taken(self):
        server = self.start_ops("--stale-after", str(STALE_AFTER))
        self.assertReady(self.wait_readyz(server, 200, "store free"), "free")
        holder = subprocess.Popen([sys.executable, "-c", SHM_LOCK_HOLDER, str(server.db)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)

        def release():
            if holder.poll() is None:
                holder.stdin.close()
                holder.wait(timeout=30)
            holder.stdout.close()
            holder.stderr.close()
        self.addCleanup(release)
        line = holder.stdout.readline()
        if line != b"held\n":
            holder.wait(timeout=30)
            self.failure(f"the lock holder said {line!r}: "
                         f"{holder.stderr.read().decode(errors='replace')}")

        resp = self.wait_readyz(server, 503, "read locks taken",
                                while_waiting=lambda: self.assertServesFromMemory(
                                    server, "read locks taken, not yet stale"))
        self.assertNotReadyStale(resp, "read locks taken")
        self.assertServesFromMemory(server, "read locks taken")
        down = self.scrape(server)
        self.assertEqual(down.get("jwksd_ready"), 0.0, down.text)
        self.assertGreater(down.get("jwksd_store_sync_age_seconds"), STALE_AFTER,
                           down.text)

        release()
        self.assertReady(self.wait_readyz(server, 200, "read locks released"),
                         "released")
        self.assertServesFromMemory(server, "read locks released")
        up = self.scrape(server)
        self.assertEqual(up.get("jwksd_ready"), 1.0, up.text)


# ------------------------------------------------------------------ metrics

class MetricsTests(OpsCase):

    def test_metrics_parse_lint_and_describe_the_process(self):
        launched = time.time()
        server = self.start_ops()
        self.post_auth(server)
        self.get_jwks(server)
        self.request(server, "GET", "/no-such-route")
        scrape = self.scrape(server)
        self.promtool(scrape.text)
        for fam in scrape.families:
            with self.subTest(family=fam.name):
                self.assertNotEqual(fam.type, "unknown", f"{fam.name} has no TYPE")
                self.assertTrue(fam.documentation, f"{fam.name} has no HELP")
                self.assertTrue(fam.name.startswith(("jwksd_", "process_")), fam.name)
        self.assertEqual(scrape.get("jwksd_build_info", version=self.version()), 1.0,
                         scrape.text)
        self.assertEqual(scrape.get("jwksd_ready"), 1.0, scrape.text)
        self.assertEqual(scrape.get("jwksd_signing_key_available", alg="RS256"), 1.0)
        self.assertEqual(scrape.get("jwksd_http_requests_total", route="other", code="404"),
                         1.0, scrape.text)
        for op in ("check", "list", "write"):
            self.assertTrue(scrape.has("jwksd_store_errors_total", op=op), scrape.text)
        self.assertGreater(scrape.get("jwksd_next_key_change_seconds"), 0, scrape.text)
        self.assertGreaterEqual(scrape.get("jwksd_store_sync_age_seconds"), 0)

        pid = server.proc.pid
        rss = scrape.get("process_resident_memory_bytes")
        self.assertGreater(rss, 1 << 20, "resident memory")
        self.assertGreater(scrape.get("process_virtual_memory_bytes"), rss)
        fds = scrape.get("process_open_fds")
        self.assertGreater(fds, 0, "open fds")
        self.assertLessEqual(abs(fds - len(os.listdir(f"/proc/{pid}/fd"))), 8,
                             f"process_open_fds {fds} against /proc/{pid}/fd")
        soft = None
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = float(line.split()[3])
        self.assertEqual(scrape.get("process_max_fds"), soft)
        start = scrape.get("process_start_time_seconds")
        self.assertAlmostEqual(start, proc_start_time(pid), delta=0.05)
        self.assertLess(abs(start - launched), 5, "start time against the launch")
        cpu = scrape.get("process_cpu_seconds_total")
        self.assertGreater(cpu, 0)
        self.assertLess(cpu, time.time() - launched + 60)

    def version(self):
        res = run_jwksd(["--version"], cwd=self.tmp)
        m = re.match(r"jwksd (\S+)", res.stdout)
        self.assertIsNotNone(m, res.describe())
        return m.group(1)

    def test_counters_move_exactly(self):
        server = self.start_ops()
        self.post_auth(server)
        first = self.request(server, "GET", JWKS_PATH)
        etag = first.header("ETag")
        self.assertTrue(etag, first.describe())
        before = self.scrape(server)
        n, m = 7, 5
        for _ in range(n):
            self.post_auth(server)
        for _ in range(m):
            resp = self.request(server, "GET", JWKS_PATH, headers={"If-None-Match": etag})
            self.assertEqual(resp.status, 304, resp.describe())
        self.request(server, "GET", JWKS_PATH)
        for _ in range(3):
            self.assertEqual(self.request(server, "GET", "/healthz").status, 200)
        after = self.scrape(server)

        def delta(name, **labels):
            return after.get(name, **labels) - before.get(name, **labels)

        self.assertEqual(delta("jwksd_http_requests_total", route="auth", code="200"), n)
        self.assertEqual(delta("jwksd_tokens_issued_total", alg="RS256"), n)
        self.assertEqual(delta("jwksd_jwks_responses_total", code="304"), m)
        self.assertEqual(delta("jwksd_jwks_responses_total", code="200"), 1)
        self.assertEqual(delta("jwksd_http_requests_total", route="jwks", code="304"), m)
        self.assertEqual(delta("jwksd_http_requests_total", route="healthz", code="200"), 3)
        self.assertEqual(delta("jwksd_http_request_duration_seconds_count", route="auth"), n)
        # The scrapes since the one before (this one is not counted yet).
        self.assertEqual(delta("jwksd_http_requests_total", route="metrics", code="200"),
                         after.scrapes_before - before.scrapes_before)
        self.assertEqual(after.get("jwksd_tokens_issued_total", alg="RS256"),
                         after.get("jwksd_http_requests_total", route="auth", code="200"))

        # Histograms: cumulative, monotone, +Inf == _count == the requests.
        hist = after.family("jwksd_http_request_duration_seconds")
        self.assertIsNotNone(hist, after.text)
        self.assertEqual(hist.type, "histogram")
        routes = {dict(k)["route"] for k in after.with_name(
            "jwksd_http_request_duration_seconds_count")}
        self.assertTrue({"auth", "jwks", "healthz", "metrics"} <= routes, routes)
        for route in routes:
            with self.subTest(route=route):
                buckets = sorted(
                    (float("inf") if dict(k)["le"] == "+Inf" else float(dict(k)["le"]), v)
                    for k, v in after.with_name(
                        "jwksd_http_request_duration_seconds_bucket").items()
                    if dict(k)["route"] == route)
                self.assertGreater(len(buckets), 1)
                self.assertEqual(buckets[-1][0], float("inf"))
                counts = [v for _, v in buckets]
                self.assertEqual(counts, sorted(counts), f"{route}: not monotone {buckets}")
                count = after.get("jwksd_http_request_duration_seconds_count", route=route)
                self.assertEqual(buckets[-1][1], count)
                requests = sum(v for k, v in after.with_name(
                    "jwksd_http_requests_total").items() if dict(k)["route"] == route)
                self.assertEqual(count, requests, f"{route}: _count against the requests")
                total = after.get("jwksd_http_request_duration_seconds_sum", route=route)
                self.assertGreater(total, 0)
                self.assertLessEqual(total, count * 30, route)

    def test_keys_gauge_matches_keys_json_and_keys_list(self):
        server = self.start_ops()
        self.post_auth(server, "expired=true")
        resp = self.admin(server, "GET", "/keys.json")
        self.assertEqual(resp.status, 200, resp.describe())
        self.assertJsonContentType(resp, "GET /keys.json")
        self.assertIn("no-store", resp.header("Cache-Control") or "")
        served = resp.json()
        listed = self.keys_list_json(server)
        scrape = self.scrape(server)
        self.assertIsInstance(served, list)
        self.assertGreaterEqual(len(served), 2, served)

        def without_state(keys):
            return [{k: v for k, v in key.items() if k != "state"} for key in keys]
        self.assertEqual(without_state(served), without_state(listed))
        # States may differ only where a boundary passed between the reads.
        now = time.time()
        for a, b in zip(served, listed):
            if a["state"] != b["state"]:
                bounds = [a.get(f) for f in ("activate_at", "retire_at", "exp")]
                self.assertTrue(any(isinstance(t, int) and abs(t - now) < 30
                                    for t in bounds), f"{a} against {b}")
        counts = {s: 0 for s in KEY_STATES}
        for key in served:
            self.assertIn(key["state"], KEY_STATES, key)
            counts[key["state"]] += 1
        for state in KEY_STATES:
            self.assertEqual(scrape.get("jwksd_keys", state=state), counts[state],
                             f"jwksd_keys{{state={state}}}: {served}")
        self.assertGreaterEqual(counts["active"], 1, served)
        self.assertGreaterEqual(counts["expired"], 1, served)
        self.assertEqual(find_private(served), [], "private material in /keys.json")
        self.assertIsNone(PRIVATE_TEXT.search(scrape.text), "/metrics")
        self.assertNotRegex(resp.body.decode(), r'"(d|p|q|dp|dq|qi)"\s*:')
        head = self.admin(server, "HEAD", "/keys.json")
        self.assertEqual((head.status, head.body), (200, b""), head.describe())

    def test_login_failures_and_rate_limits_are_counted(self):
        server = self.start_ops("--auth-rate", "2")
        resp = self.request(server, "POST", "/register", body=b'{"username": "opsuser"}',
                            headers={"Content-Type": "application/json"})
        self.assertEqual(resp.status, 201, resp.describe())
        password = resp.json()["password"]
        before = self.scrape(server)
        fails, limited = 0, 0
        attempts = 0
        while fails < 3 and attempts < 200:
            attempts += 1
            body = json.dumps({"username": "opsuser", "password": password + "x"})
            resp = self.request(server, "POST", AUTH_PATH, body=body.encode(),
                                headers={"Content-Type": "application/json"})
            if resp.status == 401:
                fails += 1
            elif resp.status == 429:
                limited += 1
                time.sleep(0.5)
            else:
                self.failure(f"wrong password: {resp.describe()}")
        # Then a burst until the limit answers 429 at least twice.
        while limited < 2 and attempts < 400:
            attempts += 1
            resp = self.request(server, "POST", AUTH_PATH)
            self.assertIn(resp.status, (200, 429), resp.describe())
            limited += resp.status == 429
        self.assertEqual(fails, 3, f"{attempts} attempts")
        self.assertEqual(limited >= 2, True, f"no 429 in {attempts} requests at 2/s")
        after = self.scrape(server)
        seen = {k: (before.samples.get(k), v) for k, v in after.samples.items()
                if k[0] == "jwksd_http_requests_total"}
        self.assertEqual(after.get("jwksd_login_failures_total")
                         - before.get("jwksd_login_failures_total"), fails, after.text)
        self.assertEqual(after.get("jwksd_rate_limited_total")
                         - before.get("jwksd_rate_limited_total"), limited, after.text)
        self.assertEqual(after.get("jwksd_http_requests_total", route="auth", code="429")
                         - before.get("jwksd_http_requests_total", route="auth", code="429"),
                         limited)
        self.assertEqual(after.get("jwksd_http_requests_total", route="auth", code="401")
                         - before.get("jwksd_http_requests_total", route="auth", code="401"),
                         fails, f"requests (before, after): {seen}")
        self.promtool(after.text)


# ------------------------------------------------------------ the listeners

class ListenerTests(OpsCase):

    def test_routes_stay_on_their_listener(self):
        server = self.start_ops()
        for path in ADMIN_ROUTES + ("/",):
            with self.subTest(listener="public", path=path):
                resp = self.request(server, "GET", path)
                self.assertJsonError(resp, 404, f"public GET {path}")
        for path in PUBLIC_ROUTES:
            for method in ("GET", "POST"):
                with self.subTest(listener="admin", path=path, method=method):
                    resp = self.admin(server, method, path, body=b"")
                    self.assertEqual(resp.status, 404, f"admin {method} {path}: "
                                                       f"{resp.describe()}")
        for path in ADMIN_ROUTES + ("/",):
            with self.subTest(listener="admin", path=path):
                resp = self.admin(server, "GET", path)
                self.assertEqual(resp.status, 200, resp.describe())
                resp = self.admin(server, "POST", path, body=b"")
                self.assertEqual(resp.status, 405, resp.describe())

    def test_timeline_page_headers(self):
        server = self.start_ops()
        resp = self.admin(server, "GET", "/")
        self.assertEqual(resp.status, 200, resp.describe())
        ctype = (resp.header("Content-Type") or "").lower()
        self.assertEqual(ctype.split(";")[0].strip(), "text/html", resp.describe())
        csp = resp.header("Content-Security-Policy") or ""
        directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
        self.assertEqual(directives.get("default-src"), ["'none'"], csp)
        for name in ("script-src", "style-src"):
            self.assertTrue(directives.get(name), csp)
            for source in directives[name]:
                self.assertRegex(source, r"\A'sha256-[A-Za-z0-9+/]+=*'\Z", csp)
        self.assertEqual(directives.get("frame-ancestors"), ["'none'"], csp)
        self.assertTrue(resp.body.lstrip().lower().startswith(b"<!doctype html"),
                        resp.body[:100])
        self.assertIsNone(PRIVATE_TEXT.search(resp.body.decode()), "the page")

    def test_port_only_form_binds_loopback_and_nothing_else_listens(self):
        server = self.start_ops()
        self.assertEqual(server.admin_host, "127.0.0.1")
        self.assertEqual(listening_sockets(server.proc.pid),
                         {(LOOPBACK, server.port), ("127.0.0.1", server.admin_port)})
        plain = self.start_server(workdir=self.make_tmpdir(), label="plain")
        self.get_jwks(plain)
        self.assertEqual(listening_sockets(plain.proc.pid), {(LOOPBACK, plain.port)})
        self.assertNotIn("admin on", plain.stderr_text())
        resp = self.request(plain, "GET", "/metrics")
        self.assertJsonError(resp, 404, "/metrics without --admin-listen")

    def test_invalid_admin_listen_and_stale_after_exit_2(self):
        cases = [("--admin-listen", v) for v in
                 ("", "x", "-1", "65536", "99999", "127.0.0.1:", ":8081",
                  "127.0.0.1:x", "1.2.3.4:70000")]
        cases += [("--stale-after", v) for v in ("", "0", "-1", "x", "2x", "1.5")]
        for flag, value in cases:
            with self.subTest(flag=flag, value=value):
                res = run_jwksd([flag, value, "--db", str(self.tmp / "never.db")],
                                cwd=self.tmp)
                self.assertEqual(res.returncode, 2, res.describe())
                self.assertIn(flag, res.stderr, res.describe())
                self.assertFalse((self.tmp / "never.db").exists(), res.describe())


if __name__ == "__main__":
    unittest.main()
