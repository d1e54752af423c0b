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
  admin   the cost of counting requests (issue 13): two jwksd, one with
          --admin-listen (every request counted, /metrics scraped once a
          second by a thread of this script, as Prometheus would) and one
          without, --admin-pairs pairs of wrk runs per route (/auth, JWKS),
          the order inside a pair alternating so that drift on a shared
          machine falls on both; each run, the medians, the ratio on/off
          and its spread. Then the same under valgrind's callgrind:
          instructions per request off and on, which machine noise does not
          move, the callbacks' share, and one scrape's cost. `--only admin`
          runs these rows alone.

Each figure is the median of --runs runs (in the admin rows, of the pairs).
The table is also written to OUT/bench-<time>.md and OUT/last.md (with --only
X, OUT/last-X.md); the previous one is shown beside it.
Only loopback traffic; every run is bounded by --duration.
"""

import argparse
import base64
import http.client
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
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "requests": requests,
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
    def __init__(self, binary, workdir, db, threads, extra=(), prefix=(),
                 start_timeout=10.0):
        self.port = free_port()
        cmd = list(prefix) + [binary, "--listen", f"{LOOP}:{self.port}",
                              "--db", str(db)]
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
        self.listen_after = wait_listening(self.port, self.proc,
                                           start_timeout)
        # Ready: the first JWKS answered (keys loaded or generated).
        urllib.request.urlopen(self.url(JWKS), timeout=30).read()
        self.ready_after = time.monotonic() - self.started

    def url(self, path):
        return f"http://{LOOP}:{self.port}{path}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=120)
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


# The routes the admin rows drive: (label, method, path).
ADMIN_ROUTES = (("POST /auth", "POST", "/auth"), ("GET JWKS", "GET", JWKS))


class Scraper:
    """GET url every `interval` seconds from a thread, as Prometheus
    scrapes /metrics."""

    def __init__(self, url, interval=1.0):
        self.url, self.interval = url, interval
        self.done = threading.Event()
        self.scrapes, self.failures, self.last = 0, 0, b""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        deadline = time.monotonic()
        while True:
            deadline += self.interval
            if self.done.wait(max(0.0, deadline - time.monotonic())):
                return
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.last = r.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1

    def stop(self):
        self.done.set()
        self.thread.join(timeout=10)


def metric_value(text, name, labels):
    """The value of sample name{labels...} in Prometheus text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def admin_counts(metrics_url):
    """{route label: jwksd_http_requests_total with code 200} from /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return {label: metric_value(text, "jwksd_http_requests_total",
                                {"route": route, "code": "200"}) or 0
            for (label, _, _), route in zip(ADMIN_ROUTES, ("auth", "jwks"))}


def admin_figures(args, work, lua):
    """jwksd with the admin listener off and on (on: /metrics scraped every
    second), --admin-pairs pairs of wrk runs per route, the order inside a
    pair alternating (off-on, on-off, ...) so that drift on a shared machine
    falls on both."""
    off = on = scraper = None
    try:
        off = Jwksd(args.jwksd, work, work / "admin-off.db", args.threads)
        admin_port = free_port()
        on = Jwksd(args.jwksd, work, work / "admin-on.db", args.threads,
                   ["--admin-listen", f"{LOOP}:{admin_port}"])
        servers = {"off": off, "on": on}
        metrics_url = f"http://{LOOP}:{admin_port}/metrics"
        scraper = Scraper(metrics_url)
        wrk_total = {label: 0 for label, _, _ in ADMIN_ROUTES}
        for label, method, path in ADMIN_ROUTES:
            for s in servers.values():
                warm_up(s.url(path), args,
                        str(lua) if method == "POST" else None)
        runs = {(label, mode): [] for label, _, _ in ADMIN_ROUTES
                for mode in servers}
        before = admin_counts(metrics_url)
        for i in range(args.admin_pairs):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            print(f"  pair {i + 1} of {args.admin_pairs} ({order[0]} "
                  f"first) ...", file=sys.stderr)
            for label, method, path in ADMIN_ROUTES:
                for mode in order:
                    s = servers[mode]
                    r = wrk_run([s.proc.pid], s.url(path), args,
                                str(lua) if method == "POST" else None)
                    runs[(label, mode)].append(r)
                    if mode == "on":
                        wrk_total[label] += r["requests"]
        scraper.stop()
        # Counting was on: over the measured runs the counters moved by what
        # wrk saw, plus the answers in flight when each run stopped.
        after = admin_counts(metrics_url)
        counted = {label: after[label] - before[label] for label in after}
        return {"runs": runs, "scrapes": scraper.scrapes,
                "scrape_failures": scraper.failures,
                "scrape_bytes": len(scraper.last),
                "counted": counted, "wrk_total": wrk_total}
    finally:
        if scraper:
            scraper.stop()
        for s in (off, on):
            if s:
                s.stop()


def spread(values):
    """(max - min) / median, as a fraction."""
    return (max(values) - min(values)) / statistics.median(values)


def admin_lines(res, args):
    runs = res["runs"]
    lines = [
        f"Admin listener off vs on (on: `--admin-listen`, every request "
        f"counted; /metrics scraped once a second, {res['scrapes']} scrapes "
        f"of {res['scrape_bytes']} bytes, {res['scrape_failures']} failed): "
        f"two servers, a fresh SQLite store each, {args.admin_pairs} pairs of "
        f"wrk runs per route, off first in odd pairs and on first in even "
        f"ones. ratio = on / off; pair ratios: median (min-max); spread of "
        f"a column = (max - min) / median.",
        "",
        "| route | req/s off | req/s on | ratio | pair ratios | "
        "req per server CPU-s off | on | ratio | pair ratios | "
        "spread off, on (req/s) | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    detail = []
    for label, _, _ in ADMIN_ROUTES:
        a, b = runs[(label, "off")], runs[(label, "on")]
        cells = []
        for key in ("rps", "per_cpu"):
            pr = [y[key] / x[key] for x, y in zip(a, b)]
            mo = statistics.median(x[key] for x in a)
            mn = statistics.median(y[key] for y in b)
            cells.append(f"{mo:.0f} | {mn:.0f} | {mn / mo:.3f} | "
                         f"{statistics.median(pr):.3f} "
                         f"({min(pr):.3f}-{max(pr):.3f})")
        lines.append(
            f"| {label} | {cells[0]} | {cells[1]} | "
            f"{spread([x['rps'] for x in a]) * 100:.1f} %, "
            f"{spread([y['rps'] for y in b]) * 100:.1f} % | "
            f"ratio >= 0.98 |")
        detail.append(f"{label}, each pair (req/s, req per server CPU-s): "
                      + "; ".join(
                          f"off {x['rps']:.0f}/{x['per_cpu']:.0f} "
                          f"on {y['rps']:.0f}/{y['per_cpu']:.0f}"
                          for x, y in zip(a, b)))
    lines += [""] + detail
    lines += ["", "Counted by the on server over its measured runs "
              "(jwksd_http_requests_total, code 200) vs the answers wrk "
              "saw: " + "; ".join(
                  f"{label} {res['counted'][label]:.0f} vs "
                  f"{res['wrk_total'][label]}"
                  for label, _, _ in ADMIN_ROUTES)
              + f" (the counters also hold the answers in flight when each "
              f"run stopped: at most {args.connections} a run)."]
    return lines


def http_requests(port, method, path, n):
    """n requests one after another on one kept-alive connection; each must
    answer 200."""
    conn = http.client.HTTPConnection(LOOP, port, timeout=120)
    try:
        for _ in range(n):
            conn.request(method, path, body=b"" if method == "POST" else None)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status}")
    finally:
        conn.close()


def callgrind_calls(path):
    """({function: [calls, inclusive Ir]}, total Ir) of a callgrind output
    file: the call records summed per callee, names uncompressed."""
    names, calls, total = {}, {}, 0
    callee, pending = None, None
    with open(path) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("cfn="):
                    callee = names.get(m.group(1))
            elif line.startswith("calls="):
                pending = int(line[6:].split()[0])
            elif pending is not None and line[:1] in "0123456789+-*":
                cost = line.split()
                rec = calls.setdefault(callee, [0, 0])
                rec[0] += pending
                rec[1] += int(cost[1]) if len(cost) > 1 else 0
                pending = None
            elif line.startswith("summary:"):
                total = int(line.split()[1])
    return calls, total


# The functions the admin rows' callgrind figures show one by one.
CG_FUNCTIONS = ("main_begin_request", "main_end_request",
                "jwks_metrics_observe", "clock_gettime")


def callgrind_figures(args, work):
    """Instructions per request, admin listener off and on: jwksd under
    callgrind (one thread per output file), N requests on one connection
    after a warm-up, counters zeroed before and dumped after them. The
    serving figure sums the threads that answered requests (those that
    called main_end_request); the process figure adds every other thread
    (the store poll, idle workers) over the same interval."""
    db = work / "callgrind.db"
    Jwksd(args.jwksd, work, db, args.threads).stop()  # keys made natively
    res = {}
    for mode in ("off", "on"):
        out = work / f"callgrind-{mode}.out"
        extra = (["--admin-listen", f"{LOOP}:{free_port()}"]
                 if mode == "on" else [])
        server = Jwksd(args.jwksd, work, db, args.threads, extra,
                       prefix=["valgrind", "--tool=callgrind",
                               "--separate-threads=yes",
                               f"--callgrind-out-file={out}"],
                       start_timeout=120)
        try:
            for dump, (label, method, path) in enumerate(ADMIN_ROUTES, 1):
                n = args.cg_auth if method == "POST" else args.cg_jwks
                print(f"  callgrind, admin {mode}, {label} x {n} ...",
                      file=sys.stderr)
                http_requests(server.port, method, path, max(1, n // 10))
                ctl = ["callgrind_control", str(server.proc.pid)]
                subprocess.run(ctl[:1] + ["-z"] + ctl[1:], check=True,
                               capture_output=True, timeout=120)
                http_requests(server.port, method, path, n)
                subprocess.run(ctl[:1] + ["-d"] + ctl[1:], check=True,
                               capture_output=True, timeout=120)
                serving = process = 0
                funcs = {}
                for f in work.glob(f"{out.name}.{dump}-*"):
                    calls, ir = callgrind_calls(f)
                    process += ir
                    if "main_end_request" not in calls:
                        continue
                    serving += ir
                    for name, (c, inc) in calls.items():
                        key = next((k for k in CG_FUNCTIONS
                                    if name and k in name), None)
                        if key:
                            acc = funcs.setdefault(key, [0, 0])
                            acc[0] += c
                            acc[1] += inc
                res[(label, mode)] = {
                    "n": n, "serving": serving / n, "process": process / n,
                    "funcs": {k: (c / n, inc / n)
                              for k, (c, inc) in funcs.items()}}
            if mode == "on":
                # What one scrape costs: the whole process, 10 scrapes.
                port = int(extra[1].rsplit(":", 1)[1])
                subprocess.run(ctl[:1] + ["-z"] + ctl[1:], check=True,
                               capture_output=True, timeout=120)
                http_requests(port, "GET", "/metrics", 10)
                subprocess.run(ctl[:1] + ["-d"] + ctl[1:], check=True,
                               capture_output=True, timeout=120)
                dump = len(ADMIN_ROUTES) + 1
                res["scrape"] = sum(
                    callgrind_calls(f)[1]
                    for f in work.glob(f"{out.name}.{dump}-*")) / 10
        finally:
            server.stop()
    return res


def callgrind_lines(res):
    lines = [
        "Instructions per request (valgrind --tool=callgrind, jwksd under "
        "it; N requests one after another on one connection after N/10 "
        "warm-up ones; no scrape meanwhile): the threads that answered "
        "them, and the whole process over the same interval. Under "
        "valgrind clock_gettime is a system call (no vDSO), so the clock "
        "reads count fewer instructions than they take natively.",
        "",
        "| route | N | Ir per request off | on | on - off | (on - off) / off "
        "| in the begin and end callbacks: on - off | whole process off "
        "| on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, _, _ in ADMIN_ROUTES:
        a, b = res[(label, "off")], res[(label, "on")]
        d = b["serving"] - a["serving"]
        hooks = [sum(r["funcs"].get(k, (0, 0))[1]
                     for k in ("main_begin_request", "main_end_request"))
                 for r in (a, b)]
        lines.append(
            f"| {label} | {a['n']} | {a['serving']:.0f} | {b['serving']:.0f} "
            f"| {d:+.0f} | {d / a['serving'] * 100:+.3f} % | "
            f"{hooks[1] - hooks[0]:+.0f} | "
            f"{a['process']:.0f} | {b['process']:.0f} |")
    lines.append("")
    for label, _, _ in ADMIN_ROUTES:
        parts = []
        for mode in ("off", "on"):
            funcs = res[(label, mode)]["funcs"]
            parts.append(f"{mode}: " + ", ".join(
                f"{k} {funcs[k][0]:.2f} calls {funcs[k][1]:.0f} Ir"
                for k in CG_FUNCTIONS if k in funcs))
        lines.append(f"{label}, per request, inclusive: " + "; ".join(parts))
    lines += ["", f"One scrape of /metrics: {res['scrape']:.0f} Ir (the whole "
              f"process, mean of 10)."]
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
    ap.add_argument("--only", choices=["algs", "admin"],
                    help="run only these rows (algs: one per --algs; "
                    "admin: the admin listener off vs on)")
    ap.add_argument("--admin-pairs", type=int, default=5,
                    help="off/on pairs of wrk runs per route in the admin "
                    "rows (default %(default)s)")
    ap.add_argument("--cg-auth", type=int, default=200,
                    help="POST /auth requests counted under callgrind "
                    "(default %(default)s)")
    ap.add_argument("--cg-jwks", type=int, default=2000,
                    help="JWKS requests counted under callgrind "
                    "(default %(default)s)")
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
        f"-c{args.connections} -d{args.duration}s, "
        + (f"{args.admin_pairs} off/on pairs" if args.only == "admin"
           else f"median of {args.runs} runs")
        + ", "
        f"jwksd --threads {args.threads or 'default'} --auth-rate 0 (no rate "
        f"limit: wrk is one client address)",
        "",
    ]
    results = {}
    if not args.only:
        lines += classic_rows(args, work, lua, results)
    if args.only in (None, "algs"):
        print("signing algorithms: " + ", ".join(args.algs) + " ...",
              file=sys.stderr)
        algres = alg_figures(args, work, lua)
        for alg, row in algres["rows"].items():
            results[f"--alg {alg} /auth"] = row["auth"]
        results["nginx (H)"] = algres["nginx"]
        results["--alg JWKS"] = algres["jwks"]
        lines += alg_lines(algres, args)
    if args.only in (None, "admin"):
        print("admin listener off vs on ...", file=sys.stderr)
        adres = admin_figures(args, work, lua)
        for (label, mode), runs in adres["runs"].items():
            results[f"admin {mode} {label}"] = median_of(runs)
        lines += ([""] if lines[-1] else []) + admin_lines(adres, args)
        if shutil.which("valgrind") and shutil.which("callgrind_control"):
            lines += [""] + callgrind_lines(callgrind_figures(args, work))
        else:
            lines += ["", "valgrind not installed: no instruction counts."]
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

    last = out / (f"last-{args.only}.md" if args.only else "last.md")
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
