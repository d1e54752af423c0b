#!/usr/bin/python3
"""jwksd benchmark: throughput, latency, CPU cost and memory, against references.

Starts the given jwksd binary on free loopback ports with fresh stores, drives
it with wrk (keep-alive connections), and prints a table with the ratios the
project's targets are stated in:

  /auth   requests per second of server CPU time vs `openssl speed rsa2048`
          on one core (RS256 is one RSA-2048 signature per request)
  JWKS    requests per second vs nginx serving the very same bytes as a
          static file, with the same wrk settings
  memory  the server's peak resident set (VmHWM) under the benchmark
  scale   the same figures on a store with 10,000 expired keys and 10
          unexpired ones, and the time from start to accepting connections
  postgres /auth and JWKS on the PostgreSQL backend (a throwaway server from
          tests/pg/pgserver.py) vs the SQLite backend in the same run, and the
          cross-instance change latency: `jwksd keys rotate` against the
          database, then the time until another instance's JWKS changes
          (median and max over --changes changes)
  algs    per signing algorithm (jwksd --alg A, a fresh store each), /auth
          requests per server CPU-second against the combined limit
          L = 1 / (1/H + 1/S) measured in the same run: H is nginx's JWKS
          requests per nginx CPU-second (master and workers, from /proc), the
          cost of one HTTP exchange in a good server; S is OpenSSL's
          signatures per CPU-second for the algorithm, the cost of one
          signature (see openssl_sign_rate). Each round measures every
          algorithm's /auth, then H, then jwksd serving the same JWKS bytes
          (its HTTP path without a signature, beside H), then S, back to
          back, so that the figures of a ratio come from the same minute of
          a shared machine. `--only algs` runs these rows alone.

Each figure is the median of --runs runs. The table is also written to
OUT/bench-<time>.md and OUT/last.md; the previous last.md is shown beside it.
Only loopback traffic; every run is bounded by --duration.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pg"))
import pgserver  # noqa: E402  (tests/pg/pgserver.py)

LOOP = "127.0.0.1"
JWKS = "/.well-known/jwks.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind((LOOP, 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=10.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection((LOOP, port), 0.05).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.002)
    raise RuntimeError("server did not listen in time")


def cpu_seconds(pid):
    """utime + stime of a process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(parent):
    """The processes whose parent is `parent` (nginx's workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            pids.append(int(d.name))
    return pids


def pids_cpu_seconds(pids):
    return sum(cpu_seconds(p) for p in pids)


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url, args, lua=None):
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}",
           f"-d{args.duration}s", "--latency"]
    if lua:
        cmd += ["-s", lua]
    out = subprocess.run(cmd + [url], capture_output=True, text=True,
                         check=True, timeout=args.duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\n\s+50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\n\s+99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": p50, "p99": p99,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else ""}


def warm_up(url, args, lua=None):
    subprocess.run(["wrk", "-t1", "-c4", f"-d{args.warmup}s"]
                   + (["-s", lua] if lua else []) + [url],
                   capture_output=True, check=True, timeout=args.warmup + 30)


def wrk_run(pids, url, args, lua=None):
    """One wrk run; per_cpu is requests per CPU-second of the processes
    `pids` (0 when pids is empty)."""
    cpu0, t0 = pids_cpu_seconds(pids), time.monotonic()
    r = run_wrk(url, args, lua)
    cpu1, t1 = pids_cpu_seconds(pids), time.monotonic()
    requests = r["rps"] * (t1 - t0)
    r["per_cpu"] = requests / (cpu1 - cpu0) if pids and cpu1 > cpu0 else 0
    return r


def median_of(runs):
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("rps", "p50", "p99", "per_cpu")}
    med["non2xx"] = sum(r["non2xx"] for r in runs)
    med["errors"] = "; ".join(r["errors"] for r in runs if r["errors"])
    return med


def measure(pids, url, args, lua=None):
    """Warm up, then --runs wrk runs; medians of each figure. pids: the
    processes whose CPU time the requests are counted against (may be
    empty)."""
    warm_up(url, args, lua)
    return median_of([wrk_run(pids, url, args, lua)
                      for _ in range(args.runs)])


def openssl_signs_per_second(args):
    rates = []
    for _ in range(args.runs):
        out = subprocess.run(
            ["openssl", "speed", "-seconds", str(args.duration), "rsa2048"],
            capture_output=True, text=True, check=True).stdout
        m = re.search(r"rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)", out)
        rates.append(float(m.group(1)))
    return statistics.median(rates)


class Jwksd:
    def __init__(self, binary, workdir, db, threads, extra=()):
        self.port = free_port()
        cmd = [binary, "--listen", f"{LOOP}:{self.port}", "--db", str(db)]
        # jwksd limits POST /auth to 10 requests per client address and
        # second by default; wrk drives it from one address, so the
        # benchmark turns that limit off (and says so in its header).
        cmd += ["--auth-rate", "0"]
        cmd += list(extra)
        if threads:
            cmd += ["--threads", str(threads)]
        self.log = open(workdir / f"jwksd-{self.port}.log", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        self.listen_after = wait_listening(self.port, self.proc)
        # Ready: the first JWKS answered (keys loaded or generated).
        urllib.request.urlopen(self.url(JWKS), timeout=30).read()
        self.ready_after = time.monotonic() - self.started

    def url(self, path):
        return f"http://{LOOP}:{self.port}{path}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        if rc != 0:
            raise RuntimeError(f"jwksd exited with {rc}")


# What `openssl speed` calls each JWS algorithm's signature, and the tag of
# its signing line in -mr output (OpenSSL 3.0: "+R1:count:bits:seconds" for
# RSA, "+R5:count:bits:seconds" for ECDSA, "+R8:count:bits:name:seconds" for
# EdDSA). PS256 is the same RSA-2048 private-key operation as RS256; the
# padding differs, not the cost.
SPEED_ALG = {"RS256": ("rsa2048", "+R1"), "PS256": ("rsa2048", "+R1"),
             "ES256": ("ecdsap256", "+R5"), "EdDSA": ("ed25519", "+R8")}


def task_cpu_ns(pid):
    """CPU time of a single-threaded process, in nanoseconds (the
    scheduler's own count, not split into user and system by samples)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def openssl_sign_rate(name, tag, args):
    """S: signatures per CPU-second for `openssl speed` algorithm name.

    `openssl speed -multi K` times its K children with the wall clock, so
    any other load on a shared machine would count against OpenSSL, while
    the server is measured in CPU time; without -multi it times in user
    CPU-seconds, which Linux splits from system time by sampling, wrongly
    by a third when the process gets little CPU. So the same load as
    -multi K (K = cores) is made as K separate `openssl speed -mr -seconds
    N name` processes at once, and each one's CPU time during its signing
    loop is read from the scheduler (/proc/PID/schedstat) when it
    announces the loop (+DTP) and when it reports the count (the tag
    line). S = sum of signatures / sum of those CPU-seconds. Returns
    (S, busy), busy being those CPU-seconds over K times the N seconds of
    the loop: near 1.0 when nothing else ran, lower when other work took
    CPU.
    """
    cores = os.cpu_count() or 1
    procs = [subprocess.Popen(
        ["openssl", "speed", "-mr", "-seconds", str(args.duration), name],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(cores)]
    found = [None] * cores

    def follow(i, proc):
        """The count and the CPU-seconds of proc's signing loop."""
        tail, cpu0 = [], None
        for line in proc.stderr:
            if cpu0 is None and line.startswith("+DTP:"):
                cpu0 = task_cpu_ns(proc.pid)
            elif line.startswith(tag + ":") and cpu0 is not None:
                cpu = (task_cpu_ns(proc.pid) - cpu0) / 1e9
                found[i] = (int(line.split(":")[1]), cpu)
            tail = (tail + [line])[-5:]
        found[i] = found[i] or "".join(tail)

    readers = [threading.Thread(target=follow, args=(i, p))
               for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    for t, p in zip(readers, procs):
        t.join(timeout=4 * args.duration + 60)
        p.wait(timeout=10)
    count, cpu = 0, 0.0
    for p, f in zip(procs, found):
        if p.returncode or not isinstance(f, tuple):
            raise RuntimeError(f"openssl speed {name} (exit {p.returncode}) "
                               f"gave no {tag} line after +DTP: {f}")
        count += f[0]
        cpu += f[1]
    return count / cpu, cpu / (cores * args.duration)


def start_nginx(workdir, body):
    root = workdir / "www" / ".well-known"
    root.mkdir(parents=True)
    (root / "jwks.json").write_bytes(body)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes auto;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 100000000;
    server {{
        listen {LOOP}:{port};
        root {workdir}/www;
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    # worker_processes auto: one worker per core, all counted in nginx's CPU.
    start = time.monotonic()
    while len(child_pids(proc.pid)) < (os.cpu_count() or 1):
        if time.monotonic() - start > 10:
            raise RuntimeError("nginx did not start its workers in time")
        time.sleep(0.01)
    return proc, port


def nginx_pids(proc):
    """nginx's master (proc, run with daemon off) and its workers."""
    return [proc.pid] + child_pids(proc.pid)


def big_store(path, pem_source, live_count=10):
    """live_count unexpired keys and 10,000 expired ones, in the assignment's
    schema. The unexpired keys are fresh RSA-2048 keys from `openssl genrsa`;
    the expired rows repeat the real expired key jwksd made (a valid blob:
    parsing all 10,000 would be the cost under test).
    """
    src = sqlite3.connect(pem_source)
    now = int(time.time())
    dead = src.execute("SELECT key FROM keys WHERE exp <= ? LIMIT 1",
                       (now,)).fetchone()[0]
    src.close()
    live = [subprocess.run(["openssl", "genrsa", "-traditional", "2048"],
                           capture_output=True, check=True).stdout
            for _ in range(live_count)]
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE keys(kid INTEGER PRIMARY KEY AUTOINCREMENT, "
               "key BLOB NOT NULL, exp INTEGER NOT NULL)")
    db.executemany("INSERT INTO keys (key, exp) VALUES (?, ?)",
                   [(dead, now - 3600 - i) for i in range(10000)])
    db.executemany("INSERT INTO keys (key, exp) VALUES (?, ?)",
                   [(pem, now + 86400 + i) for i, pem in enumerate(live)])
    db.commit()
    db.close()
    os.chmod(path, 0o600)
    return live_count


def etag(server):
    with urllib.request.urlopen(server.url(JWKS), timeout=10) as r:
        return r.headers["ETag"]


def kids(server):
    with urllib.request.urlopen(server.url(JWKS), timeout=10) as r:
        return [k["kid"] for k in json.load(r)["keys"]]


def postgres_figures(args, work, lua):
    """/auth and JWKS on the postgres backend, and how soon a change made in
    the database shows on another instance."""
    pg = pgserver.PgServer(label="bench")
    pg.init()
    pg.start()
    try:
        pg_args = ["--backend", "postgres", "--pg-schema", "bench"]
        server = Jwksd(args.jwksd, work, pg.conninfo, args.threads, pg_args)
        res = {"auth": measure([server.proc.pid], server.url("/auth"), args,
                               str(lua)),
               "jwks": measure([server.proc.pid], server.url(JWKS), args)}
        other = Jwksd(args.jwksd, work, pg.conninfo, args.threads, pg_args)
        # Alternately `keys rotate` (a successor appears, published before
        # it signs) and `keys revoke` of that successor (it leaves): each
        # one a change of the key set made through another process.
        lat, added = [], None
        for i in range(args.changes):
            before_tag, before = etag(other), kids(other)
            cmd = (["keys", "revoke", added] if i % 2 else ["keys", "rotate"])
            subprocess.run([args.jwksd] + cmd + ["--db", pg.conninfo]
                           + pg_args, check=True, capture_output=True,
                           timeout=60)
            t0 = time.monotonic()
            while etag(other) == before_tag:
                if time.monotonic() - t0 > 10:
                    raise RuntimeError(f"{cmd} did not show within 10 s")
                time.sleep(0.002)
            lat.append(time.monotonic() - t0)
            new = sorted(set(kids(other)) - set(before), key=int)
            added = new[-1] if new else added
        res["change_ms"] = [x * 1000 for x in lat]
        other.stop()
        server.stop()
        return res
    finally:
        pg.remove()


def classic_rows(args, work, lua, results):
    """The /auth, JWKS, big-store and postgres tables; the figures go into
    results too."""
    print("openssl speed rsa2048 (one core) ...", file=sys.stderr)
    signs = openssl_signs_per_second(args)

    small_db = work / "small.db"
    server = Jwksd(args.jwksd, work, small_db, args.threads)
    print("jwksd, 2-key store ...", file=sys.stderr)
    results["auth"] = measure([server.proc.pid], server.url("/auth"), args, str(lua))
    results["jwks"] = measure([server.proc.pid], server.url(JWKS), args)
    body = urllib.request.urlopen(server.url(JWKS)).read()
    results["rss"] = peak_rss_mib(server.proc.pid)
    server.stop()

    print("nginx, same JWKS bytes ...", file=sys.stderr)
    nginx, nport = start_nginx(work, body)
    try:
        results["nginx"] = measure(nginx_pids(nginx),
                                   f"http://{LOOP}:{nport}{JWKS}", args)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)

    print("jwksd, 10,000 expired + 10 unexpired keys ...", file=sys.stderr)
    big_db = work / "big.db"
    live = big_store(big_db, small_db)
    starts = []
    for _ in range(args.runs):
        s = Jwksd(args.jwksd, work, big_db, args.threads)
        starts.append((s.listen_after, s.ready_after))
        s.stop()
    big = Jwksd(args.jwksd, work, big_db, args.threads)
    results["big_auth"] = measure([big.proc.pid], big.url("/auth"), args, str(lua))
    results["big_jwks"] = measure([big.proc.pid], big.url(JWKS), args)
    results["big_rss"] = peak_rss_mib(big.proc.pid)
    big.stop()
    print("jwksd on PostgreSQL, and cross-instance changes ...",
          file=sys.stderr)
    pgres = postgres_figures(args, work, lua)
    results["pg_auth"], results["pg_jwks"] = pgres["auth"], pgres["jwks"]
    listen_s = statistics.median(s[0] for s in starts)
    ready_s = statistics.median(s[1] for s in starts)

    a, j, n = results["auth"], results["jwks"], results["nginx"]
    ba, bj = results["big_auth"], results["big_jwks"]
    return [
        "| endpoint | req/s | p50 ms | p99 ms | req per server CPU-s | reference | ratio | target |",
        "|---|---|---|---|---|---|---|---|",
        f"| POST /auth | {a['rps']:.0f} | {a['p50']:.2f} | {a['p99']:.2f} | "
        f"{a['per_cpu']:.0f} | openssl rsa2048 sign/s, 1 core: {signs:.0f} | "
        f"{a['per_cpu'] / signs:.3f} | >= 0.95 |",
        f"| GET JWKS | {j['rps']:.0f} | {j['p50']:.2f} | {j['p99']:.2f} | "
        f"{j['per_cpu']:.0f} | nginx, same bytes: {n['rps']:.0f} req/s, "
        f"{n['per_cpu']:.0f} per nginx CPU-s "
        f"(p50 {n['p50']:.2f}, p99 {n['p99']:.2f}) | {j['rps'] / n['rps']:.3f} | >= 0.9 |",
        f"| peak RSS | {results['rss']:.1f} MiB | | | | | | <= 16 MiB |",
        "",
        f"Store with 10,000 expired + {live} unexpired keys:",
        "",
        "| figure | value | 2-key store | ratio | target |",
        "|---|---|---|---|---|",
        f"| start to accepting connections | {listen_s * 1000:.0f} ms | | | < 1000 ms |",
        f"| start to first JWKS answered | {ready_s * 1000:.0f} ms | | | |",
        f"| POST /auth req/s | {ba['rps']:.0f} | {a['rps']:.0f} | "
        f"{ba['rps'] / a['rps']:.3f} | >= 0.9 |",
        f"| GET JWKS req/s | {bj['rps']:.0f} | {j['rps']:.0f} | "
        f"{bj['rps'] / j['rps']:.3f} | >= 0.9 |",
        f"| peak RSS | {results['big_rss']:.1f} MiB | {results['rss']:.1f} MiB | | |",
        "",
        "PostgreSQL backend (one local server, Unix socket) vs SQLite, same run:",
        "",
        "| figure | postgres | sqlite | ratio | target |",
        "|---|---|---|---|---|",
        f"| POST /auth req/s | {results['pg_auth']['rps']:.0f} | {a['rps']:.0f} | "
        f"{results['pg_auth']['rps'] / a['rps']:.3f} | >= 0.95 |",
        f"| GET JWKS req/s | {results['pg_jwks']['rps']:.0f} | {j['rps']:.0f} | "
        f"{results['pg_jwks']['rps'] / j['rps']:.3f} | >= 0.95 |",
        f"| cross-instance change, {len(pgres['change_ms'])} changes | median "
        f"{statistics.median(pgres['change_ms']):.1f} ms, max "
        f"{max(pgres['change_ms']):.1f} ms | | | <= 1000 ms |",
        "",
    ]


def token_alg(server):
    """The header alg of a token from server's POST /auth."""
    req = urllib.request.Request(server.url("/auth"), data=b"",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        header = json.load(r)["token"].split(".")[0]
    header += "=" * (-len(header) % 4)
    return json.loads(base64.urlsafe_b64decode(header))["alg"]


def alg_figures(args, work, lua):
    """Per algorithm: /auth requests per server CPU-second, H, S, and the
    ratio to L = 1/(1/H + 1/S), each figure the median over --runs rounds
    and the ratio the median of the rounds' ratios."""
    servers, nginx = {}, None
    try:
        for alg in args.algs:
            servers[alg] = Jwksd(args.jwksd, work, work / f"alg-{alg}.db",
                                 args.threads, ["--alg", alg])
            got = token_alg(servers[alg])
            if got != alg:
                raise RuntimeError(f"jwksd --alg {alg} signed with {got}")
        # The JWKS of the first algorithm's server, served as a static file.
        body = urllib.request.urlopen(
            servers[args.algs[0]].url(JWKS), timeout=10).read()
        nginx, nport = start_nginx(work / "nginx-algs", body)
        nurl = f"http://{LOOP}:{nport}{JWKS}"
        first = servers[args.algs[0]]
        for alg, server in servers.items():
            warm_up(server.url("/auth"), args, str(lua))
        warm_up(nurl, args)
        warm_up(first.url(JWKS), args)
        auth = {alg: [] for alg in args.algs}
        h_runs, j_runs, s_runs = [], [], {}
        ratios = {alg: [] for alg in args.algs}
        for i in range(args.runs):
            print(f"  round {i + 1} of {args.runs} ...", file=sys.stderr)
            for alg, server in servers.items():
                auth[alg].append(wrk_run([server.proc.pid],
                                         server.url("/auth"), args, str(lua)))
            h_runs.append(wrk_run(nginx_pids(nginx), nurl, args))
            # The same bytes from jwksd: its HTTP path without a signature.
            j_runs.append(wrk_run([first.proc.pid], first.url(JWKS), args))
            rates = {}
            for name, tag in sorted({SPEED_ALG[a] for a in args.algs}):
                rates[name] = openssl_sign_rate(name, tag, args)
            for alg in args.algs:
                sign, busy = rates[SPEED_ALG[alg][0]]
                s_runs.setdefault(alg, []).append((sign, busy))
                h = h_runs[-1]["per_cpu"]
                limit = 1 / (1 / h + 1 / sign)
                ratios[alg].append(auth[alg][-1]["per_cpu"] / limit)
        rows = {}
        h = median_of(h_runs)
        for alg in args.algs:
            sign = statistics.median(x[0] for x in s_runs[alg])
            rows[alg] = {
                "auth": median_of(auth[alg]),
                "S": sign,
                "busy": statistics.median(x[1] for x in s_runs[alg]),
                "L": 1 / (1 / h["per_cpu"] + 1 / sign),
                "ratio": statistics.median(ratios[alg]),
            }
        return {"rows": rows, "nginx": h, "jwks": median_of(j_runs),
                "jwks_bytes": len(body)}
    finally:
        if nginx:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=30)
        for server in servers.values():
            server.stop()


def alg_lines(res, args):
    cores = os.cpu_count()
    h, j = res["nginx"], res["jwks"]
    lines = [
        f"Signing algorithms: jwksd --alg A, a fresh SQLite store each; "
        f"median of {args.runs} rounds, each measuring every row, H and S "
        f"back to back (ratio: median of the rounds' ratios).",
        f"H = nginx serving the {res['jwks_bytes']}-byte JWKS of "
        f"--alg {args.algs[0]} as a static file: {h['rps']:.0f} req/s, "
        f"{h['per_cpu']:.0f} req per nginx CPU-s (master + workers). "
        f"S = signatures per CPU-s: `openssl speed -mr -seconds "
        f"{args.duration} X` as {cores} processes at once (the load of "
        f"-multi {cores}), sum of signatures / sum of the CPU-seconds of "
        f"their signing loops (scheduler time); busy = those CPU-seconds / "
        f"({cores} x {args.duration} s).",
        f"The same JWKS bytes from jwksd (its HTTP path without a "
        f"signature): {j['rps']:.0f} req/s, {j['per_cpu']:.0f} req per "
        f"server CPU-s, {j['per_cpu'] / h['per_cpu']:.3f} of H.",
        "",
        "| alg | /auth req/s | p50 ms | p99 ms | req per server CPU-s | "
        "S: openssl sign per CPU-s (busy) | H: nginx JWKS req per CPU-s | "
        "L = 1/(1/H+1/S) | ratio | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for alg, r in res["rows"].items():
        a = r["auth"]
        lines.append(
            f"| {alg} | {a['rps']:.0f} | {a['p50']:.2f} | {a['p99']:.2f} | "
            f"{a['per_cpu']:.0f} | {SPEED_ALG[alg][0]}: {r['S']:.0f} "
            f"({r['busy']:.2f}) | {h['per_cpu']:.0f} | {r['L']:.0f} | "
            f"{r['ratio']:.3f} | >= 0.9 |")
    busy = min(r["busy"] for r in res["rows"].values())
    if busy < 0.9:
        lines += ["", f"Other work had CPU while OpenSSL ran (busy {busy:.2f} "
                  "< 0.90): the machine was not quiet, compare with a rerun."]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jwksd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--changes", type=int, default=20,
                    help="cross-instance changes timed on postgres")
    ap.add_argument("--threads", type=int, default=0,
                    help="jwksd --threads (default: jwksd's default)")
    ap.add_argument("--only", choices=["algs"],
                    help="run only these rows (algs: one per --algs)")
    ap.add_argument("--algs", default=",".join(SPEED_ALG),
                    help="signing algorithms of the algs rows "
                    "(default %(default)s)")
    args = ap.parse_args()
    args.algs = args.algs.split(",")
    for alg in args.algs:
        if alg not in SPEED_ALG:
            ap.error(f"--algs: unknown {alg!r}, use names from "
                     + ",".join(SPEED_ALG))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jwksd-bench-"))
    work.chmod(0o755)  # nginx's workers run as another user
    lua = work / "post.lua"
    lua.write_text('wrk.method = "POST"\nwrk.body = ""\n')

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"],
                         capture_output=True, text=True).stdout.split(":")[-1]
    load0 = os.getloadavg()
    lines = [
        f"jwksd benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"{os.cpu_count()} cores ({cpu.strip()}), wrk -t{args.wrk_threads} "
        f"-c{args.connections} -d{args.duration}s, median of {args.runs} runs, "
        f"jwksd --threads {args.threads or 'default'} --auth-rate 0 (no rate "
        f"limit: wrk is one client address)",
        "",
    ]
    results = {}
    if args.only != "algs":
        lines += classic_rows(args, work, lua, results)
    print("signing algorithms: " + ", ".join(args.algs) + " ...",
          file=sys.stderr)
    algres = alg_figures(args, work, lua)
    for alg, row in algres["rows"].items():
        results[f"--alg {alg} /auth"] = row["auth"]
    results["nginx (H)"] = algres["nginx"]
    results["--alg JWKS"] = algres["jwks"]
    lines += alg_lines(algres, args)
    load1 = os.getloadavg()
    lines += ["", "Load average (1, 5, 15 min) at the start: "
              + ", ".join(f"{x:.2f}" for x in load0) + "; at the end: "
              + ", ".join(f"{x:.2f}" for x in load1)
              + " (this run's own load included)"]
    bad = [f"{k}: {v['non2xx']} non-2xx, socket errors {v['errors']!r}"
           for k, v in results.items()
           if isinstance(v, dict) and (v["non2xx"] or v["errors"])]
    if bad:
        lines += ["", "Errors during the runs: " + "; ".join(bad)]
    table = "\n".join(lines) + "\n"

    last = out / ("last-algs.md" if args.only == "algs" else "last.md")
    previous = last.read_text() if last.exists() else None
    (out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(table)
    last.write_text(table)
    print(table)
    if previous:
        print("Previous run (" + str(last) + " before this one):\n")
        print(previous)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
