"""The request path never waits on a store (ARCHITECTURE.md), on the backend
from KS_TEST_BACKEND.

Another process holds the key store's write lock for HOLD seconds across a
scheduled rotation while clients hammer POST /auth, POST /auth?expired=true
and the JWKS. No request fails, the slowest answer stays far below the lock
time (MAX_LATENCY), and once the lock is released the rotation that fell
due happens: a new kid appears in the JWKS within ROTATE_AFTER seconds.

The schedule (SCHEDULE, server/lifecycle.c): --key-ttl 19 --token-ttl 2
--jwks-max-age 1 --margin 1 gives keys that sign for 14 s, published 2 s
ahead, each successor due 2 + 3 s (publish_ahead + lead) before the signing
key retires, and a retired key published until 3 s after it retires. The
hold starts 2 s after a successor took over (the retire_at of the key
signing at the start, from `jwksd keys list --json`) and lasts 10 s, so
while the lock is held the retired key leaves the JWKS (a new snapshot, a
new newest expired key for ?expired=true) and the next successor falls due
(a rotation the store cannot take), while the key that signs keeps signing
for 2 s after the release: a failed request is the service's fault, never
the schedule's (the test checks that arithmetic on the real key times).

Lock holders, one per backend (LOCK_HOLDERS): sqlite, a `BEGIN EXCLUSIVE`
through Python's sqlite3 module; lmdb, tests/hold_store_lock.c (env
JWKS_HOLD_STORE_LOCK) inside an LMDB write transaction. A holder is a
function (case, server, seconds) -> Popen of a process that prints "held"
on stdout once it holds the lock and lets it go after `seconds`. Another
backend adds its own entry (hold_postgres is the hook for PostgreSQL).
"""

import os
import statistics
import subprocess
import sys
import threading
import time

from harness import (
    AUTH_PATH, BACKEND, JWKS_PATH, JwksdTestCase, http_request, jwks_kids,
)
import pgserver  # noqa: E402  (on the path harness sets)

HOLD = 10.0          # seconds the other process holds the write lock
MAX_LATENCY = 2.0    # the slowest answer allowed, far below HOLD
ROTATE_AFTER = 5.0   # the overdue rotation shows this soon after the release
CLIENTS = 4          # client threads, each cycling through the requests
SCHEDULE = ("--key-ttl", "19", "--token-ttl", "2", "--jwks-max-age", "1",
            "--margin", "1")
AFTER_TAKEOVER = 2.0  # the hold starts this long after a successor signs
REQUESTS = (("POST", AUTH_PATH), ("POST", AUTH_PATH + "?expired=true"),
            ("GET", JWKS_PATH))

SQLITE_HOLDER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
print("released", flush=True)
"""


def hold_sqlite(case, server, seconds):
    return subprocess.Popen(
        [sys.executable, "-c", SQLITE_HOLDER, str(server.db), str(seconds)],
        cwd=case.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def hold_with_program(case, server, seconds):
    prog = os.environ.get("JWKS_HOLD_STORE_LOCK")
    if not prog:
        case.failure("JWKS_HOLD_STORE_LOCK is not set (the path of "
                     "tests/hold_store_lock, which CTest passes)")
    return subprocess.Popen(
        [prog, server.backend, str(server.db), str(seconds)], cwd=case.tmp,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hold_postgres(case, server, seconds):
    """psql in a transaction holding jwksd's advisory write lock of the
    server's schema (server.db is the test's PgStore)."""
    store = server.db
    script = (f"\\o /dev/null\nBEGIN;\n"
              f"SELECT pg_advisory_xact_lock({store.lock_key()});\n"
              f"\\echo held\nSELECT pg_sleep({float(seconds)});\nCOMMIT;\n")
    proc = subprocess.Popen(
        [str(pgserver.PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-d", store.server_conninfo], cwd=case.tmp, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write(script)
    proc.stdin.close()
    proc.stdin = None  # communicate() in the cleanup must not flush it
    return proc


LOCK_HOLDERS = {
    "sqlite": hold_sqlite,
    "lmdb": hold_with_program,
    "postgres": hold_postgres,
}


class Hammer:
    """CLIENTS threads sending REQUESTS in turn until stopped; every answer
    is recorded as (method path, status or error text, seconds)."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results = []
        self.threads = [threading.Thread(target=self.run, args=(i,),
                                         daemon=True) for i in range(CLIENTS)]

    def run(self, index):
        n = index
        while not self.stop.is_set():
            method, path = REQUESTS[n % len(REQUESTS)]
            n += 1
            t0 = time.monotonic()
            try:
                resp = http_request(self.port, method, path, timeout=30)
                outcome = resp.status
            except OSError as exc:
                outcome = repr(exc)
            with self.lock:
                self.results.append((f"{method} {path}", outcome,
                                     time.monotonic() - t0, t0))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


class StoreLockTests(JwksdTestCase):

    def kids(self, server):
        resp = http_request(server.port, "GET", JWKS_PATH, timeout=30)
        self.assertEqual(resp.status, 200, resp.describe())
        return set(jwks_kids(resp.json()))

    def takeover(self, server):
        """When the successor of the key signing now takes over."""
        active = [e["retire_at"] for e in self.key_list(db=server.db, timeout=30).values()
                  if e.get("state") == "active" and "retire_at" in e]
        self.assertTrue(active, "a key signs")
        return min(active)

    def start_holder(self, server):
        holder = LOCK_HOLDERS.get(BACKEND)
        if holder is None:
            self.failure(f"no lock holder for backend {BACKEND!r}: add one "
                         f"to LOCK_HOLDERS")
        proc = holder(self, server, HOLD)
        self.addCleanup(self.reap, proc)
        line = proc.stdout.readline()
        if line.strip() != "held":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            self.failure(f"the lock holder did not take the lock: "
                         f"{line!r} {err!r}")
        return proc

    @staticmethod
    def reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)

    def test_a_held_store_lock_delays_no_request(self):
        server = self.start_server(*SCHEDULE, db=self.store_path())
        before = self.kids(server)
        self.assertTrue(before, "the server publishes a key")
        for method, path in REQUESTS:
            resp = http_request(server.port, method, path, timeout=30)
            self.assertEqual(resp.status, 200, f"{method} {path}: "
                             f"{resp.describe()}")

        start = self.takeover(server) + AFTER_TAKEOVER
        wait = start - 1 - time.time()
        self.assertLess(wait, 60, f"the next takeover is {wait:.0f} s away")
        if wait > 0:
            time.sleep(wait)
        with Hammer(server.port) as hammer:
            time.sleep(max(0.0, start - time.time()))
            holder = self.start_holder(server)
            held_at = time.monotonic()
            held_kids = self.kids(server)
            # The schedule lets a key sign past the release (see above).
            wall = time.time()
            signs = [e for e in self.key_list(db=server.db, timeout=30).values()
                     if e.get("activate_at", 0) <= wall and
                     e.get("retire_at", 0) >= wall + HOLD + 1 and
                     e.get("state") in ("active", "pending")]
            self.assertTrue(signs, "the test's schedule: a key signs until "
                            "after the release")
            try:
                holder.wait(HOLD + 20)
            except subprocess.TimeoutExpired:
                self.failure("the lock holder did not let go")
            released_at = time.monotonic()
            self.assertGreaterEqual(released_at - held_at, HOLD - 0.5,
                                    "the lock was held for HOLD seconds")
            rotated_at = None
            while time.monotonic() < released_at + ROTATE_AFTER:
                if self.kids(server) - held_kids:
                    rotated_at = time.monotonic()
                    break
                time.sleep(0.1)
            time.sleep(0.5)

        results = hammer.results
        latencies = sorted(r[2] for r in results)
        during = [r for r in results if held_at <= r[3] <= released_at]
        failed = [r for r in results if r[1] != 200]
        slow = [r for r in results if r[2] >= MAX_LATENCY]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"\n[{BACKEND}] {len(results)} requests ({len(during)} while "
              f"the lock was held): median {statistics.median(latencies):.4f}"
              f" s, p99 {p99:.4f} s, max {latencies[-1]:.4f} s; "
              f"{len(failed)} failed, {len(slow)} at or above "
              f"{MAX_LATENCY} s", file=sys.stderr)
        self.assertGreater(len(during), 20, "clients ran while the lock was "
                           "held")
        self.assertEqual(failed[:5], [], f"{len(failed)} requests failed"
                         f"{server.context()}")
        self.assertEqual(slow[:5], [], f"{len(slow)} answers took "
                         f"{MAX_LATENCY} s or more (max {latencies[-1]:.2f} s)"
                         f"{server.context()}")
        self.assertIsNotNone(rotated_at, f"no new kid within {ROTATE_AFTER} "
                             f"s of the release (kids while held: "
                             f"{sorted(held_kids)}){server.context()}")
        print(f"[{BACKEND}] a new kid {rotated_at - released_at:.2f} s after "
              f"the release", file=sys.stderr)


if __name__ == "__main__":
    import unittest
    unittest.main()
