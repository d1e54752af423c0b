"""Load and concurrency against the real binary, backend-generic
(env KS_TEST_BACKEND).

- 200 concurrent keep-alive clients mixing GET JWKS and POST /auth for a
  bounded time: no 5xx, no connection error (the allowance is zero), the
  server still running, every token verifying against the JWKS fetched
  afterwards, and the server's descriptors and memory back near their
  baseline once the clients are gone.
- SIGTERM while 50 clients hammer: exit 0 within the drain bound, every
  response that arrived complete and valid, the store intact on restart.

Clients are threads using http.client; each test starts its own server
(they measure the process).
"""

import base64
import http.client
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import unittest
from collections import Counter

from pathlib import Path

import jwt

from harness import (
    AUTH_PATH, BACKEND, JWKS_PATH, LOOPBACK, JwksdTestCase, db_args, jwk_for_kid,
    jwks_kids, jwksd_bin, run_jwksd, split_jwt,
)

CLIENT_TIMEOUT = 30.0  # per request; a queued keep-alive client may wait long


def sanitizer():
    """The sanitizer the binary under test was built with, or None. Shadow
    memory and quarantines make its RSS meaningless for a leak check."""
    data = Path(jwksd_bin()).read_bytes()
    for name, symbol in (("AddressSanitizer", b"__asan_init"),
                         ("ThreadSanitizer", b"__tsan_init")):
        if symbol in data:
            return name
    return None


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class Outcome:
    """Thread-safe tallies of what the clients saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.errors = []          # (phase, repr) of unexpected failures
        self.dropped = Counter()  # (phase, exception name) of allowed drops
        self.tokens = []
        self.bad = []             # descriptions of invalid responses
        self.per_client = Counter()
        self.first_answer = {}    # client -> seconds until its first answer
        self.max_latency = 0.0
        # Set when SIGTERM is sent: from then on a 503 {"error": "shutting
        # down"} is the documented answer to a request that was not in flight.
        self.shutdown_at = None

    def answer(self, client, status, body, started, latency, jwks_request):
        problem = None
        token = None
        if status == 503 and self.shutdown_at is not None:
            try:
                if json.loads(body) != {"error": "shutting down"}:
                    problem = f"503 during shutdown with body {body[:200]!r}"
            except ValueError:
                problem = f"503 during shutdown, not JSON: {body[:200]!r}"
        elif status != 200:
            problem = f"HTTP {status} {body[:200]!r}"
        else:
            try:
                data = json.loads(body)
                if jwks_request:
                    if not isinstance(data.get("keys"), list) or not data["keys"]:
                        problem = f"JWKS without keys: {body[:200]!r}"
                else:
                    token = data["token"]
                    split_jwt(token)
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"invalid 200 body ({exc!r}): {body[:200]!r}"
        with self.lock:
            self.statuses[status] += 1
            self.per_client[client] += 1
            self.first_answer.setdefault(client, time.monotonic() - started)
            self.max_latency = max(self.max_latency, latency)
            if problem:
                self.bad.append(problem)
            elif token:
                self.tokens.append(token)


def hammer(port, client, outcome, keep_running, started, allow_drops=False):
    """One keep-alive client alternating POST /auth and GET JWKS.

    Failures before any response byte are "drops" (allowed only when
    allow_drops: the server is shutting down); a failure after the status
    line is a partial response and always an error.
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=CLIENT_TIMEOUT)
    n = client  # spread the two kinds evenly across clients
    try:
        while keep_running():
            jwks_request = n % 2 == 1
            n += 1
            phase = "send"
            t0 = time.monotonic()
            try:
                if jwks_request:
                    conn.request("GET", JWKS_PATH)
                else:
                    conn.request("POST", AUTH_PATH, body=b"",
                                 headers={"Content-Type": "application/json"})
                phase = "status"
                resp = conn.getresponse()
                phase = "body"
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=CLIENT_TIMEOUT)
                no_response = phase in ("send", "status") and isinstance(
                    exc, (ConnectionError, http.client.RemoteDisconnected))
                with outcome.lock:
                    if allow_drops and no_response:
                        outcome.dropped[(phase, type(exc).__name__)] += 1
                    else:
                        outcome.errors.append((phase, repr(exc)))
                if allow_drops:
                    time.sleep(0.02)
                continue
            outcome.answer(client, resp.status, body, started,
                           time.monotonic() - t0, jwks_request)
    finally:
        conn.close()


class LoadTests(JwksdTestCase):

    CLIENTS = 200
    DURATION = 8.0
    RSS_MARGIN_KIB = 8 * 1024   # allocator arenas and caches may keep a few MiB
    FD_SETTLE = 8.0             # keep-alive idle timeout (5 s) plus slack

    def warm_up(self, server):
        """Some concurrent traffic so that thread arenas and caches exist
        before the baseline is taken."""
        outcome = Outcome()
        deadline = time.monotonic() + 1.0
        threads = [threading.Thread(
            target=hammer, args=(server.port, i, outcome,
                                 lambda: time.monotonic() < deadline, time.monotonic()))
            for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CLIENT_TIMEOUT)
        self.assertEqual(outcome.errors, [], "warm-up requests failed")

    def settled_fds(self, pid, want=None, timeout=FD_SETTLE):
        """The fd count once it is stable (or equal to want) within timeout."""
        deadline = time.monotonic() + timeout
        last = proc_fds(pid)
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = proc_fds(pid)
            if (want is not None and now == want) or (want is None and now == last):
                return now
            last = now
        return last

    def test_200_concurrent_clients(self):
        server = self.start_server()
        pid = server.proc.pid
        self.post_auth(server)
        self.warm_up(server)
        base_fds = self.settled_fds(pid)
        base_rss = proc_rss_kib(pid)

        outcome = Outcome()
        barrier = threading.Barrier(self.CLIENTS + 1)
        deadline = [0.0]

        def client(i):
            barrier.wait()
            hammer(server.port, i, outcome, lambda: time.monotonic() < deadline[0],
                   started)
        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(self.CLIENTS)]
        for t in threads:
            t.start()
        started = time.monotonic()
        deadline[0] = started + self.DURATION
        barrier.wait()
        peak_fds = 0
        while time.monotonic() < deadline[0]:
            peak_fds = max(peak_fds, proc_fds(pid))
            time.sleep(0.2)
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        self.assertFalse(any(t.is_alive() for t in threads), "clients still running")
        total = sum(outcome.statuses.values())
        summary = (f"{total} answers from {self.CLIENTS} clients in {self.DURATION} s "
                   f"{dict(outcome.statuses)}, slowest answer {outcome.max_latency:.1f} s, "
                   f"peak {peak_fds} fds")

        self.assertTrue(server.running, f"jwksd died under load; {summary}")
        self.assertEqual(outcome.errors[:5], [],
                         f"{len(outcome.errors)} connection errors (allowance: none); "
                         f"{summary}")
        self.assertEqual([s for s in outcome.statuses if s >= 500], [],
                         f"5xx under load; {summary}")
        self.assertEqual(outcome.bad[:5], [], f"{len(outcome.bad)} invalid answers; {summary}")
        starved = [i for i in range(self.CLIENTS) if outcome.per_client[i] == 0]
        self.assertEqual(starved, [], f"clients that never got an answer; {summary}")

        # Every token verifies against the JWKS served afterwards.
        jwks = self.get_jwks(server)
        keys = {}
        for token in outcome.tokens:
            kid = split_jwt(token)[0]["kid"]
            if kid not in keys:
                keys[kid] = jwk_for_kid(jwks, kid)
                self.assertIsNotNone(keys[kid], f"token kid {kid} not in the JWKS "
                                                f"{jwks_kids(jwks)}")
            try:
                jwt.decode(token, keys[kid].key, algorithms=["RS256"])
            except jwt.PyJWTError as exc:
                self.failure(f"a token issued under load does not verify: {exc!r}")
        self.assertGreater(len(outcome.tokens), self.CLIENTS // 2, summary)

        # Descriptors back to the baseline, memory near it.
        fds = self.settled_fds(pid, want=base_fds)
        self.assertEqual(fds, base_fds,
                         f"open descriptors {fds} {self.FD_SETTLE} s after the load, "
                         f"baseline {base_fds} (peak {peak_fds}): a leak")
        rss = proc_rss_kib(pid)
        if sanitizer() is None:  # (under a sanitizer, leaks fail the exit code)
            self.assertLessEqual(
                rss, base_rss + self.RSS_MARGIN_KIB,
                f"VmRSS {rss} KiB after the load, baseline {base_rss} KiB: more than "
                f"{self.RSS_MARGIN_KIB} KiB growth after {total} requests")
        self.assertTrue(server.running)


class SigtermUnderLoadTests(JwksdTestCase):

    CLIENTS = 50
    LOAD_BEFORE = 2.0
    # main.c answers new requests 503 and waits for those in flight (at most
    # 10 s), then CivetWeb stops.
    DRAIN_BOUND = 10.0 + 5.0

    def test_sigterm_under_load(self):
        server = self.start_server()
        _, token = self.post_auth(server)
        _, expired = self.post_auth(server, query="expired=true")
        kids_before = sorted(jwks_kids(self.get_jwks(server)))
        expired_kid = split_jwt(expired)[0]["kid"]

        outcome = Outcome()
        running = threading.Event()
        running.set()
        started = time.monotonic()
        threads = [threading.Thread(target=hammer, daemon=True,
                                    args=(server.port, i, outcome, running.is_set,
                                          started, True))
                   for i in range(self.CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(self.LOAD_BEFORE)
        with outcome.lock:
            before = sum(outcome.statuses.values())
        signalled = time.monotonic()
        outcome.shutdown_at = signalled
        try:
            rc = server.stop(signal.SIGTERM, timeout=self.DRAIN_BOUND)
        finally:
            running.clear()
            for t in threads:
                t.join(CLIENT_TIMEOUT + 5)
        took = time.monotonic() - signalled
        total = sum(outcome.statuses.values())
        summary = (f"{total} answers ({total - before} after SIGTERM), "
                   f"{dict(outcome.statuses)}, requests left unanswered at shutdown "
                   f"{dict(outcome.dropped)}, exit after {took:.1f} s")
        self.assertEqual(rc, 0, f"jwksd must exit 0 on SIGTERM under load; {summary}")
        self.assertLessEqual(took, self.DRAIN_BOUND, summary)
        self.assertEqual(outcome.errors[:5], [],
                         f"{len(outcome.errors)} partial or broken responses; {summary}")
        self.assertEqual(outcome.bad[:5], [],
                         f"{len(outcome.bad)} invalid responses; {summary}")
        # In flight at SIGTERM: 200. Arriving after it: 200 or 503 "shutting
        # down" (checked in Outcome.answer), never anything else.
        self.assertLessEqual(set(outcome.statuses), {200, 503}, summary)
        self.assertGreater(before, self.CLIENTS, f"the load never got going; {summary}")

        # The store is intact: same keys after a restart, tokens still verify.
        if BACKEND == "sqlite":
            con = sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)
            try:
                (check,), = con.execute("PRAGMA integrity_check").fetchall()
            finally:
                con.close()
            self.assertEqual(check, "ok", "SQLite integrity check after SIGTERM")
        again = self.start_server(db=server.db, label="restart")
        self.assertEqual(sorted(jwks_kids(self.get_jwks(again))), kids_before,
                         "the published keys changed across SIGTERM and restart")
        _, expired2 = self.post_auth(again, query="expired=true")
        self.assertEqual(split_jwt(expired2)[0]["kid"], expired_kid)
        for issued in [token] + outcome.tokens[-50:]:
            self.verify_with_served_jwks(again, issued)



def proc_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


class LoginLoadTests(JwksdTestCase):
    """200 concurrent keep-alive clients logging in (HTTP Basic, valid
    credentials, so every request runs one Argon2id verification): peak
    resident memory (VmHWM) stays within the hash-concurrency bound, at
    most one m = 19456 KiB block per core at a time on top of the server's
    usual footprint (measured before the load, after the same number of
    clients have fetched anonymous tokens and the JWKS, so that worker
    threads, their stacks and the allocator's arenas exist) plus SLACK_KIB.
    """

    CLIENTS = 200
    USERS = 8
    DURATION = 30.0
    # Under a sanitizer a hash is 5-20 times slower (TSan: about 1.5 logins
    # a second on two cores), and RSS says nothing: fewer clients for a
    # shorter time, so that the queue of first requests drains within
    # LOGIN_TIMEOUT; the point there is races, not memory.
    SANITIZER_CLIENTS = 40
    SANITIZER_DURATION = 10.0
    ARGON2_M_KIB = 19456
    # What a login holds beyond its Argon2 block is small (the credentials,
    # an 8 KiB answer buffer, a token, a queued auth-log entry), but up to
    # --threads (64) workers hold it at once and each of their malloc
    # arenas keeps some freed chunks: 16 MiB is 256 KiB per worker.
    SLACK_KIB = 16 * 1024
    # 200 clients queue for 2 hashes at a time: on a busy machine a login
    # may wait in the queue for tens of seconds, which is not an error.
    LOGIN_TIMEOUT = 120.0

    def test_200_clients_logging_in(self):
        # The users are made by `jwksd users add` before the server starts:
        # the server's footprint is measured before it ran any hash but the
        # one it makes at start.
        db = self.store_path()
        users = []
        for i in range(self.USERS):
            name = f"load{i}"
            res = run_jwksd(["users", "add", name, "--backend", BACKEND, *db_args(db)],
                            cwd=self.tmp, timeout=60)
            self.assertEqual(res.returncode, 0, res.describe())
            users.append((name, res.stdout.split("(shown once): ")[1].strip()))
        server = self.start_server(db=db)
        pid = server.proc.pid
        auths = [base64.b64encode(f"{n}:{p}".encode()).decode() for n, p in users]

        # The usual footprint: the same clients, without passwords.
        outcome = Outcome()
        deadline = time.monotonic() + 2.0
        warm = [threading.Thread(target=hammer, daemon=True,
                                 args=(server.port, i, outcome,
                                       lambda: time.monotonic() < deadline,
                                       time.monotonic()))
                for i in range(self.CLIENTS)]
        for t in warm:
            t.start()
        for t in warm:
            t.join(CLIENT_TIMEOUT + 5)
        self.assertEqual(outcome.errors[:5], [], "warm-up requests failed")
        time.sleep(0.5)
        base_rss = proc_rss_kib(pid)
        hwm_before = proc_hwm_kib(pid)

        san = sanitizer()
        duration = self.SANITIZER_DURATION if san else self.DURATION
        clients = self.SANITIZER_CLIENTS if san else self.CLIENTS
        cores = os.sysconf("SC_NPROCESSORS_ONLN")
        lock = threading.Lock()
        statuses = Counter()
        errors, bad, latencies = [], [], []
        per_client = Counter()
        stop_at = [0.0]
        barrier = threading.Barrier(clients + 1)

        def client(i):
            name, _ = users[i % self.USERS]
            auth = {"Authorization": "Basic " + auths[i % self.USERS],
                    "Content-Length": "0"}
            conn = http.client.HTTPConnection(LOOPBACK, server.port,
                                              timeout=self.LOGIN_TIMEOUT)
            barrier.wait()
            try:
                while time.monotonic() < stop_at[0]:
                    t0 = time.monotonic()
                    try:
                        conn.request("POST", AUTH_PATH, headers=auth)
                        resp = conn.getresponse()
                        body = resp.read()
                    except (OSError, http.client.HTTPException) as exc:
                        conn.close()
                        conn = http.client.HTTPConnection(LOOPBACK, server.port,
                                                          timeout=self.LOGIN_TIMEOUT)
                        with lock:
                            errors.append(repr(exc))
                        continue
                    problem = None
                    if resp.status == 200:
                        try:
                            claims = split_jwt(json.loads(body)["token"])[1]
                            if claims.get("preferred_username") != name:
                                problem = f"token for {claims} to {name}"
                        except (ValueError, KeyError, TypeError) as exc:
                            problem = f"invalid 200 ({exc!r}): {body[:200]!r}"
                    with lock:
                        statuses[resp.status] += 1
                        per_client[i] += 1
                        latencies.append(time.monotonic() - t0)
                        if problem:
                            bad.append(problem)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(clients)]
        for t in threads:
            t.start()
        stop_at[0] = time.monotonic() + duration
        barrier.wait()
        peak_rss = 0
        while time.monotonic() < stop_at[0]:
            peak_rss = max(peak_rss, proc_rss_kib(pid))
            time.sleep(0.1)
        for t in threads:
            t.join(self.LOGIN_TIMEOUT + 5)
        self.assertFalse(any(t.is_alive() for t in threads), "clients still running")
        hwm = proc_hwm_kib(pid)
        total = sum(statuses.values())
        latencies.sort()
        bound = base_rss + cores * self.ARGON2_M_KIB + self.SLACK_KIB
        summary = (f"{total} logins from {clients} clients in {duration:.0f} s "
                   f"{dict(statuses)}, median answer "
                   f"{latencies[len(latencies) // 2] if latencies else 0:.2f} s, slowest "
                   f"{latencies[-1] if latencies else 0:.2f} s; VmRSS before {base_rss} "
                   f"KiB (VmHWM {hwm_before}), peak sampled {peak_rss} KiB, VmHWM {hwm} "
                   f"KiB, bound {bound} KiB = before + {cores} cores x "
                   f"{self.ARGON2_M_KIB} + {self.SLACK_KIB}")
        print(f"\nlogin load ({BACKEND}): {summary}", file=sys.stderr)

        self.assertTrue(server.running, f"jwksd died under load; {summary}")
        self.assertEqual(errors[:5], [], f"{len(errors)} connection errors; {summary}")
        self.assertEqual(dict(statuses), {200: total}, f"every login gets a token; {summary}")
        self.assertEqual(bad[:5], [], f"{len(bad)} invalid answers; {summary}")
        starved = [i for i in range(clients) if per_client[i] == 0]
        self.assertEqual(starved, [], f"clients that never got an answer; {summary}")
        if san is None:  # shadow memory and quarantines: no RSS bound
            self.assertLessEqual(hwm, bound, f"peak RSS over the bound; {summary}")


if __name__ == "__main__":
    unittest.main()
