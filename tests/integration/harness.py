"""Shared helpers for the jwksd integration tests.

The tests start the real jwksd binary (env JWKSD_BIN) on a free loopback port
with a store in a fresh temporary directory, talk HTTP to it with http.client
(or a raw socket where http.client cannot express the request), and stop it
with SIGTERM, expecting exit code 0.

Only the standard library, PyJWT (python3-jwt) and cryptography are used.
"""

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

LOOPBACK = "127.0.0.1"
JWKS_PATH = "/.well-known/jwks.json"
AUTH_PATH = "/auth"

# The backend the generic suite runs against (one CTest entry per backend).
BACKEND = os.environ.get("KS_TEST_BACKEND", "sqlite")

# The store name each backend uses when --db is not given (file backends).
DEFAULT_STORE_NAMES = {
    "sqlite": "totally_not_my_privateKeys.db",
    "lmdb": "totally_not_my_privateKeys.lmdb",
}

# Backends whose store is a file or directory on this host.
FILE_BACKENDS = frozenset(DEFAULT_STORE_NAMES)

# Members a JWK may carry only for a private key (RFC 7518 section 6.3.2).
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi"})

# The exact members every published key has.
PUBLIC_JWK_MEMBERS = frozenset({"kid", "kty", "use", "alg", "n", "e"})

# What the assignment's tools send: Basic userABC:password123.
BASIC_AUTH = "Basic dXNlckFCQzpwYXNzd29yZDEyMw=="
ASSIGNMENT_CREDENTIALS = {"username": "userABC", "password": "password123"}

REPO_ROOT = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(REPO_ROOT / "tests" / "pg"))
import pgserver  # noqa: E402  (tests/pg/pgserver.py: the throwaway PostgreSQL)

HTTP_TIMEOUT = 30.0   # generous: the first request may wait for key generation
START_TIMEOUT = 10.0  # until the server accepts TCP connections
STOP_TIMEOUT = 10.0   # from SIGTERM to exit
START_ATTEMPTS = 3    # a start is retried on a new port if the server exits
CLOCK_SLACK = 2       # seconds allowed between our clock reads and the server's
WAIT_TIMEOUT = 10.0   # default bound of JwksdTestCase.wait_for (a hang guard)
KEYS_TIMEOUT = 60.0   # default bound of a `jwksd keys` command (a hang guard)

KID_RE = re.compile(r"[1-9][0-9]*")
B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")


def jwksd_bin():
    """The path of the jwksd binary under test."""
    path = os.environ.get("JWKSD_BIN")
    if not path:
        raise RuntimeError("JWKSD_BIN is not set: point it at the built jwksd")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"JWKSD_BIN={path} is not an executable file")
    return path


def free_port():
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def can_connect(port, timeout=0.2, host=LOOPBACK):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------- PostgreSQL

_own_pg = None


def pg_conninfo():
    """The conninfo of the shared test PostgreSQL server.

    From env JWKS_TEST_PG, else the file named by env JWKS_TEST_PG_FILE (the
    CTest fixture pg_start writes it), else (a suite run by hand) a server
    of this process's own, started once and removed at exit.
    """
    global _own_pg
    conninfo = os.environ.get("JWKS_TEST_PG")
    if conninfo:
        return conninfo
    path = os.environ.get("JWKS_TEST_PG_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise RuntimeError(
                f"JWKS_TEST_PG_FILE={path} is unreadable ({exc}): the CTest "
                f"fixture pg_start did not run or failed") from None
    if _own_pg is None:
        _own_pg = pgserver.PgServer(label="suite").start()
    return _own_pg.conninfo


# Every PgStore made in this process, by the conninfo string it shows, so
# that a `--db CONNINFO` built from str(store) gets its --pg-schema.
_PG_STORES = {}


class PgStore:
    """A PostgreSQL store for one test: a server's conninfo and a schema of its
    own (created by jwksd on first open, dropped in cleanup).

    str() is a conninfo that names the schema in application_name, so that
    it is unique: jwksd_args() adds `--pg-schema SCHEMA` to any command line
    that passes it as --db (or as postgres:CONNINFO to copy) without one.
    """

    def __init__(self, schema, conninfo=None):
        self.schema = schema
        self.server_conninfo = conninfo or pg_conninfo()
        self.conninfo = f"{self.server_conninfo} application_name={schema}"
        _PG_STORES[self.conninfo] = self

    def __str__(self):
        return self.conninfo

    def __repr__(self):
        return f"PgStore(schema={self.schema!r})"

    def __eq__(self, other):
        return isinstance(other, PgStore) and other.conninfo == self.conninfo

    def __hash__(self):
        return hash(self.conninfo)

    @property
    def name(self):
        return self.schema

    def args(self):
        return ["--db", self.conninfo, "--pg-schema", self.schema]

    def psql(self, sql, check=True):
        """Run SQL on this store's database (search_path = the schema);
        returns psql's unaligned, tuples-only output."""
        return pgserver.psql(self.server_conninfo,
                             f"SET search_path TO {self.schema}; {sql}",
                             check=check)

    def rows(self, sql):
        """The rows of a query as lists of strings (| separated by psql)."""
        out = self.psql(sql)
        return [line.split("|") for line in out.splitlines() if line]

    def exists(self):
        """Whether jwksd created the schema (the store) yet."""
        out = pgserver.psql(
            self.server_conninfo,
            f"SELECT count(*) FROM pg_namespace WHERE nspname = '{self.schema}'")
        return out.strip() == "1"

    def drop(self):
        pgserver.psql(self.server_conninfo,
                      f"DROP SCHEMA IF EXISTS {self.schema} CASCADE", check=False)

    def lock_key(self):
        """The advisory lock key jwksd's write transactions take on this
        store (backends/postgres.c ks_pg_lock_key: FNV-1a of "jwksd:" and
        the schema name, as a signed 64-bit integer)."""
        h = 14695981039346656037
        for byte in f"jwksd:{self.schema}".encode():
            h = ((h ^ byte) * 1099511628211) % (1 << 64)
        return h - (1 << 64) if h >= 1 << 63 else h

    def hold_write_lock(self, seconds, timeout=10.0):
        """Another process (psql) holds jwksd's write lock for seconds:
        returns the Popen once the lock is granted; wait() on it for the
        release. The caller kills it in cleanup."""
        key = self.lock_key()
        proc = subprocess.Popen(
            [str(pgserver.PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
             "-d", self.server_conninfo, "-c",
             f"BEGIN; SELECT pg_advisory_xact_lock({key}); "
             f"SELECT pg_sleep({float(seconds)}); COMMIT;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        high, low = (key % (1 << 64)) >> 32, key % (1 << 32)
        query = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                 f"AND classid::bigint = {high} AND objid::bigint = {low} AND objsubid = 1")
        deadline = time.monotonic() + timeout
        while pgserver.psql(self.server_conninfo, query).strip() != "1":
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"psql did not get the lock of {self.schema}: "
                                     f"{proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.02)
        return proc


def pg_store_for(directory, tag=""):
    """The PgStore that belongs to a test directory: the same one every time."""
    digest = hashlib.sha1(f"{Path(directory).resolve()}|{tag}".encode()).hexdigest()
    return PgStore(f"t_{digest[:20]}")


def sqlite_records(path, immutable=False):
    """{kid string: (blob bytes, exp)} of a SQLite store, read-only
    (immutable: without SQLite's locks, for a file no process writes)."""
    uri = f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")
    con = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        return {str(kid): (as_bytes(key), exp) for kid, key, exp in
                con.execute("SELECT kid, key, exp FROM keys ORDER BY kid")}
    finally:
        con.close()


def pg_records(store):
    """{kid string: (blob bytes, exp)} of a PostgreSQL store (psql)."""
    return {kid: (bytes.fromhex(key), int(exp)) for kid, key, exp in store.rows(
        "SELECT kid, encode(key, 'hex'), exp FROM keys ORDER BY kid")}


def store_for(directory, backend=BACKEND):
    """The store a test keeps in a directory: the backend's default file name
    there, or for postgres a schema derived from the directory's path."""
    if backend == "postgres":
        return pg_store_for(directory)
    return Path(directory) / DEFAULT_STORE_NAMES.get(backend, "store")


def db_args(db):
    """The --db flags for a store (a path, a PgStore)."""
    if isinstance(db, PgStore):
        return db.args()
    return ["--db", str(db)]


def jwksd_args(args):
    """A jwksd command line with every PgStore expanded to its flags.

    A PgStore object in args becomes its conninfo; if a conninfo of a
    PgStore appears (bare after --db, or as postgres:CONNINFO) and no
    --pg-schema is given, `--pg-schema SCHEMA` is added after the
    subcommand's arguments.
    """
    out = []
    schema = None
    for arg in args:
        if isinstance(arg, PgStore):
            store = arg
            arg = arg.conninfo
        else:
            arg = str(arg)
            key = arg[len("postgres:"):] if arg.startswith("postgres:") else arg
            store = _PG_STORES.get(key)
        if store is not None and schema is None:
            schema = store.schema
        out.append(arg)
    if schema is not None and "--pg-schema" not in out:
        out += ["--pg-schema", schema]
    return out


def store_display(db):
    """Text that jwksd's description of the store must contain: the path,
    or for postgres the schema's name (it is also in application_name)."""
    if isinstance(db, PgStore):
        return db.schema
    return str(db)


def strip_store(text, db):
    """text without the store's description (so numbers in it do not count):
    the path, or every keyword=value pair of a conninfo and the schema."""
    if isinstance(db, PgStore):
        text = re.sub(r"\S*=\S*", " ", text)
        return text.replace(db.server_conninfo, " ").replace(db.schema, " ")
    return text.replace(str(db), " ")


def file_backends_only(reason):
    """Declare a test that applies to file-backed stores only (a file mode,
    a corrupt file, a path): it does not run on postgres, with the reason."""
    return unittest.skipIf(BACKEND not in FILE_BACKENDS,
                           f"applies to file-backed stores only: {reason}")


# ---------------------------------------------------------------- base64url, JWT

def sha256(path):
    """The hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def as_bytes(value):
    """A store value (str, bytes or memoryview) as bytes."""
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


def load_private(pem):
    """A cryptography private key from a PEM store value (str or bytes)."""
    return serialization.load_pem_private_key(as_bytes(pem), password=None)


def public_pem(pem):
    """The SubjectPublicKeyInfo PEM of a PEM private key (str or bytes)."""
    return load_private(pem).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64url_decode(text):
    """Decode unpadded base64url; raises ValueError on padding or bad chars."""
    if not isinstance(text, str) or not B64URL_RE.fullmatch(text):
        raise ValueError(f"not unpadded base64url: {text!r}")
    if len(text) % 4 == 1:
        raise ValueError(f"impossible base64url length {len(text)}")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split_jwt(token):
    """(header, claims) of a compact JWS, parsed by hand (no verification)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError(f"a JWS has 3 dot-separated parts, got {len(parts)}")
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    b64url_decode(parts[2])
    return header, claims


def jwk_for_kid(jwks, kid):
    """The PyJWK with this kid from a served key set, or None."""
    for key in jwt.PyJWKSet.from_dict(jwks).keys:
        if key.key_id == kid:
            return key
    return None


def jwks_kids(jwks):
    return [k.get("kid") for k in jwks.get("keys", [])]


def all_json_keys(value):
    """Every object member name anywhere in a parsed JSON value."""
    if isinstance(value, dict):
        names = set(value)
        for item in value.values():
            names |= all_json_keys(item)
        return names
    if isinstance(value, list):
        names = set()
        for item in value:
            names |= all_json_keys(item)
        return names
    return set()


def rsa_public_key_from_jwk(jwk):
    """A cryptography RSA public key built from a JWK dict."""
    return RSAAlgorithm.from_jwk(json.dumps(jwk))


def int_from_b64url(text):
    return int.from_bytes(b64url_decode(text), "big")


# ------------------------------------------------------------------- HTTP

@dataclass
class Response:
    status: int
    reason: str
    headers: list  # [(name, value)] in order received
    body: bytes

    def header(self, name):
        """The first value of a header (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_values(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def describe(self):
        body = self.body[:500].decode("utf-8", "replace")
        return f"HTTP {self.status} {self.reason}, headers {self.headers}, body {body!r}"


def http_request(port, method, path, body=None, headers=None,
                 timeout=HTTP_TIMEOUT, host=LOOPBACK):
    """One request on a new connection; returns a Response."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.reason, resp.getheaders(), data)
    finally:
        conn.close()


def raw_exchange(port, request_bytes, timeout=5.0):
    """Send raw bytes and read until the server closes or goes quiet.

    Returns (data, closed): closed is False when reading stopped on the
    timeout instead of end of stream.
    """
    chunks = []
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request_bytes)
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return b"".join(chunks), False
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)


def parse_head(head):
    """(status, reason, [(name, value)]) of a raw response head (the bytes
    before the blank line); raises ValueError on a malformed one."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), (parts[2] if len(parts) > 2 else ""), headers


def parse_raw_response(data):
    """(status, [(name, value)], body bytes) of one raw HTTP response."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no end of headers in {data[:300]!r}")
    status, _, headers = parse_head(head)
    return status, headers, body


def header_of(headers, name):
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return None


# ------------------------------------------------------------------ server

class Server:
    """One jwksd process, started on a free loopback port."""

    def __init__(self, workdir, db=None, backend=BACKEND, args=(), label="jwksd",
                 prefix=(), umask=0o022, host=LOOPBACK):
        self.workdir = Path(workdir)
        if db is None or isinstance(db, PgStore):
            self.db = db
        else:
            self.db = Path(db)
        self.backend = backend
        self.args = list(args)
        self.label = label
        # A command that execs jwksd (e.g. setpriv ... to run it as another
        # user); the process keeps its pid, so signals still reach jwksd.
        self.prefix = list(prefix)
        self.umask = umask
        # The address it listens on (another one than loopback when it runs
        # in a network namespace of its own, see prefix).
        self.host = host
        self.limits_off = True
        self.port = None
        self.proc = None
        self.launches = 0
        self.stderr_path = None
        self._files = []

    # -- lifecycle

    def command(self):
        cmd = self.prefix + [jwksd_bin(), "--listen", f"{self.host}:{self.port}"]
        if self.backend is not None:
            cmd += ["--backend", self.backend]
        if self.db is not None:
            cmd += db_args(self.db)
        # POST /auth is limited to 10 requests per client address and
        # second by default, POST /register to 5 per minute; the suites
        # drive them from one address much faster, so each limit is off
        # unless a test sets it itself.
        # (A test of the defaults sets limits_off to False.)
        given = [str(a) for a in self.args]
        for flag in ("--auth-rate", "--register-rate"):
            if self.limits_off and flag not in given:
                cmd += [flag, "0"]
        return jwksd_args(cmd + self.args)

    def launch(self):
        """Start the process on a new free port; returns the monotonic launch time."""
        self.port = free_port()
        self.launches += 1
        self.stderr_path = self.workdir / f"{self.label}-stderr-{self.launches}.log"
        stdout_path = self.workdir / f"{self.label}-stdout-{self.launches}.log"
        err = open(self.stderr_path, "wb")
        out = open(stdout_path, "wb")
        self._files += [err, out]
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, umask=self.umask)
        return started

    def start(self):
        """Launch and wait until the port accepts connections.

        If the process exits before listening (e.g. the port was taken in the
        meantime), it is launched again on another port, up to START_ATTEMPTS
        times. Raises AssertionError with the server's stderr otherwise.
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            self.launch()
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if can_connect(self.port, host=self.host):
                    return self
                time.sleep(0.02)
            else:
                raise AssertionError(
                    f"jwksd did not accept connections on port {self.port} "
                    f"within {START_TIMEOUT} s{self.context()}")
            rc = self.proc.returncode
            self.proc = None
            if attempt == START_ATTEMPTS:
                raise AssertionError(
                    f"jwksd exited with {rc} before listening "
                    f"(attempt {attempt}){self.context()}")
        return self

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signal the server and return its exit code.

        Raises AssertionError if it had already exited on its own or does not
        exit in time (it is then killed).
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is not None:
                raise AssertionError(
                    f"jwksd exited on its own with code {proc.returncode} "
                    f"before it was stopped{self.context()}")
            proc.send_signal(sig)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    f"jwksd did not exit within {timeout} s of signal "
                    f"{sig!s}; killed{self.context()}") from None
        finally:
            self._close_files()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._close_files()

    def _close_files(self):
        for f in self._files:
            f.close()
        self._files = []

    # -- diagnostics

    def stderr_text(self):
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def stderr_lines(self):
        return [line for line in self.stderr_text().splitlines() if line.strip()]

    def context(self):
        text = self.stderr_text()
        if len(text) > 4000:
            text = "...\n" + text[-4000:]
        return (f"\n--- {self.label} stderr (port {self.port}, launch "
                f"{self.launches}) ---\n{text}--- end of stderr ---")

    # -- HTTP

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        return http_request(self.port, method, path, body, headers, timeout,
                            host=self.host)

    def url(self, path):
        return f"http://{self.host}:{self.port}{path}"


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    listened: bool = False
    args: list = field(default_factory=list)

    def describe(self):
        return (f"jwksd {' '.join(self.args)} -> exit {self.returncode} after "
                f"{self.elapsed:.2f} s\n--- stdout ---\n{self.stdout}"
                f"--- stderr ---\n{self.stderr}--- end ---")


def run_jwksd(args, cwd, timeout=10.0, watch_port=None, prefix=()):
    """Run jwksd to completion (for flags and failures that must exit).

    If watch_port is given, keep trying to connect to it while the process
    runs; RunResult.listened tells whether a connection ever succeeded.
    A process still running after timeout is killed and reported with
    returncode None. prefix is a command that execs jwksd (e.g. setpriv).
    """
    cmd = list(prefix) + [jwksd_bin()] + jwksd_args(args)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, umask=0o022)
        listened = False
        deadline = started + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if watch_port is not None and not listened:
                listened = can_connect(watch_port, timeout=0.05)
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        returncode = proc.poll()
        if returncode is None:
            proc.kill()
            proc.wait()
        out.seek(0)
        err.seek(0)
        return RunResult(returncode, out.read().decode("utf-8", "replace"),
                         err.read().decode("utf-8", "replace"), elapsed,
                         listened, list(args))


# --------------------------------------------------------------- test base

class JwksdTestCase(unittest.TestCase):
    """Base class: a fresh temporary directory per test, servers stopped in
    cleanup with exit code 0 asserted, and the stderr of every server this
    test started appended to every assertion message."""

    maxDiff = 4000

    def setUp(self):
        jwksd_bin()  # fail early and clearly when the binary is missing
        self._servers = []
        self.tmp = self.make_tmpdir()

    def make_tmpdir(self):
        tmp = tempfile.TemporaryDirectory(prefix="jwksd-test-")
        self.addCleanup(tmp.cleanup)
        if BACKEND == "postgres":
            # Registered before any server of the test: runs after they stop.
            self.addCleanup(pg_store_for(tmp.name).drop)
        return Path(tmp.name)

    def default_store_name(self, backend=BACKEND):
        if backend not in DEFAULT_STORE_NAMES:
            self.skipTest(f"no default store file for backend {backend}: "
                          f"a test of default file names applies to file "
                          f"backends only")
        return DEFAULT_STORE_NAMES[backend]

    def store_path(self, directory=None, backend=BACKEND):
        """The test's store in directory (default: the test's directory): a
        file path, or for postgres a PgStore (a schema of its own, dropped
        when the directory's cleanup runs)."""
        return store_for(directory or self.tmp, backend)

    # -- the keys commands and the store's contents

    # Bounds for a suite to raise: how long wait_for polls, how long a
    # `jwksd keys` command may run.
    wait_timeout = WAIT_TIMEOUT
    keys_timeout = KEYS_TIMEOUT

    def keys(self, command, *args, db=None, backend=BACKEND, timeout=None):
        """Run `jwksd keys COMMAND --backend B --db DB ARGS...` to completion
        (db: the test's store by default); returns the RunResult."""
        db = self.store_path() if db is None else db
        return run_jwksd(["keys", command, "--backend", backend, "--db", str(db),
                          *args], cwd=self.tmp,
                         timeout=self.keys_timeout if timeout is None else timeout)

    def keys_ok(self, command, *args, **kwargs):
        """keys(), asserting exit code 0."""
        res = self.keys(command, *args, **kwargs)
        self.assertEqual(res.returncode, 0, res.describe())
        return res

    def key_list(self, *args, **kwargs):
        """`jwksd keys list --json ARGS...` as {kid string: entry}; kwargs
        as for keys()."""
        res = self.keys_ok("list", "--json", *args, **kwargs)
        try:
            entries = json.loads(res.stdout)
        except ValueError as exc:
            self.failure(f"keys list --json is not JSON ({exc}):\n{res.describe()}")
        self.assertIsInstance(entries, list, res.describe())
        return {str(e["kid"]): e for e in entries}

    def lmdb_as_sqlite(self, db, check=True):
        """A SQLite copy of an LMDB store made by `jwksd copy` from a scratch
        copy of its data file (the store itself is never opened). When
        jwksd cannot read it: a failure, or None if check is false."""
        scratch = self.make_tmpdir()
        shutil.copyfile(db, scratch / "src.lmdb")
        res = run_jwksd(["copy", "--from", f"lmdb:{scratch / 'src.lmdb'}",
                         "--to", f"sqlite:{scratch / 'copy.db'}"], cwd=scratch,
                        timeout=30)
        if res.returncode != 0 or not (scratch / "copy.db").exists():
            if not check:
                return None
            self.failure(f"reading the LMDB store through jwksd copy failed:\n"
                         f"{res.describe()}")
        return scratch / "copy.db"

    def store_records(self, db, backend=BACKEND):
        """{kid string: (blob bytes, exp)} of a store (LMDB: through
        lmdb_as_sqlite, so the store itself is not opened)."""
        if isinstance(db, PgStore):
            return pg_records(db)
        if backend == "sqlite":
            return sqlite_records(db)
        return sqlite_records(self.lmdb_as_sqlite(db))

    def wait_for(self, what, predicate, timeout=None, interval=0.05):
        """Poll predicate() until it returns a true value and return that;
        fail naming what after timeout seconds (default wait_timeout)."""
        timeout = self.wait_timeout if timeout is None else timeout
        started = time.monotonic()
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() - started > timeout:
                self.failure(f"{what}: not within {timeout} s")
            time.sleep(interval)

    # -- diagnostics on failure

    def _formatMessage(self, msg, standardMsg):
        text = super()._formatMessage(msg, standardMsg)
        for server in getattr(self, "_servers", []):
            text += server.context()
        return text

    def failure(self, message):
        """Fail with message plus the servers' stderr."""
        self.fail(self._formatMessage(None, message))

    # -- servers

    def new_server(self, *args, db=None, backend=BACKEND, workdir=None,
                   label="jwksd"):
        """A Server (not yet started) whose stop is registered for cleanup.

        db defaults to the backend's default store name in the test's
        temporary directory.
        """
        workdir = Path(workdir or self.tmp)
        if db is None:
            db = self.store_path(workdir, backend)
        server = Server(workdir, db=db, backend=backend, args=args, label=label)
        self._servers.append(server)
        self.addCleanup(self._stop_in_cleanup, server)
        return server

    def start_server(self, *args, **kwargs):
        return self.new_server(*args, **kwargs).start()

    def _stop_in_cleanup(self, server):
        if server.proc is not None:
            rc = server.stop()
            if rc != 0:
                raise AssertionError(
                    f"jwksd exited with {rc} on SIGTERM, expected 0"
                    f"{server.context()}")

    def stop_server(self, server, sig=signal.SIGTERM):
        rc = server.stop(sig)
        self.assertEqual(rc, 0, f"jwksd must exit 0 on signal {sig!s}")

    # -- HTTP with diagnostics

    def request(self, server, method, path, body=None, headers=None,
                timeout=HTTP_TIMEOUT):
        try:
            return server.request(method, path, body, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            self.failure(f"{method} {path} failed: {exc!r}")

    def post_auth(self, server, query="", body=None, headers=None):
        """POST /auth, assert 200 JSON with a token; returns (response, token)."""
        path = AUTH_PATH + (f"?{query}" if query else "")
        resp = self.request(server, "POST", path, body=body, headers=headers)
        self.assertEqual(resp.status, 200, f"POST {path}: {resp.describe()}")
        self.assertJsonContentType(resp, f"POST {path}")
        try:
            data = resp.json()
        except ValueError as exc:
            self.failure(f"POST {path}: body is not JSON ({exc}): {resp.describe()}")
        self.assertIsInstance(data, dict, f"POST {path}: {resp.describe()}")
        token = data.get("token")
        self.assertIsInstance(token, str, f"POST {path}: no string token: {resp.describe()}")
        return resp, token

    def get_jwks(self, server):
        """GET the JWKS, assert 200 JSON {"keys": [...]}; returns the dict."""
        resp = self.request(server, "GET", JWKS_PATH)
        self.assertEqual(resp.status, 200, f"GET {JWKS_PATH}: {resp.describe()}")
        self.assertJsonContentType(resp, f"GET {JWKS_PATH}")
        try:
            jwks = resp.json()
        except ValueError as exc:
            self.failure(f"JWKS body is not JSON ({exc}): {resp.describe()}")
        self.assertIsInstance(jwks, dict, resp.describe())
        self.assertIsInstance(jwks.get("keys"), list, f"no keys list: {resp.describe()}")
        return jwks

    def verify_with_served_jwks(self, server, token):
        """Verify token with PyJWT using only the key the server publishes."""
        header = jwt.get_unverified_header(token)
        jwks = self.get_jwks(server)
        key = jwk_for_kid(jwks, header.get("kid"))
        self.assertIsNotNone(
            key, f"token kid {header.get('kid')!r} is not in the served JWKS "
                 f"{jwks_kids(jwks)}")
        try:
            return jwt.decode(token, key.key, algorithms=["RS256"],
                              options={"require": ["exp", "iat"]})
        except jwt.PyJWTError as exc:
            self.failure(f"token does not verify with the served JWKS: {exc!r}")

    # -- assertions

    def assertJsonContentType(self, resp, what=""):
        ctype = resp.header("Content-Type") or ""
        self.assertEqual(ctype.split(";")[0].strip().lower(), "application/json",
                         f"{what}: Content-Type {ctype!r}: {resp.describe()}")

    def assertJsonError(self, resp, status, what=""):
        """resp has the status and a JSON body {"error": "<non-empty string>"}."""
        self.assertEqual(resp.status, status, f"{what}: {resp.describe()}")
        if resp.body == b"" and status >= 400:
            self.failure(f"{what}: empty error body, want JSON {{\"error\": ...}}: "
                         f"{resp.describe()}")
        self.assertJsonContentType(resp, what)
        try:
            data = resp.json()
        except ValueError as exc:
            self.failure(f"{what}: error body is not JSON ({exc}): {resp.describe()}")
        self.assertIsInstance(data, dict, f"{what}: {resp.describe()}")
        self.assertIsInstance(data.get("error"), str, f"{what}: {resp.describe()}")
        self.assertTrue(data["error"].strip(), f"{what}: empty error text")
        return data

    def assertTokenWellFormed(self, token, what="token"):
        """Header {"alg":"RS256","typ":"JWT","kid":"<digits>"}, integer iat/exp.

        Returns (header, claims) as parsed from the token.
        """
        try:
            header, claims = split_jwt(token)
        except ValueError as exc:
            self.failure(f"{what} is not a compact JWS: {exc}: {token!r}")
        self.assertEqual(set(header), {"alg", "typ", "kid"}, f"{what} header {header}")
        self.assertEqual(header["alg"], "RS256", f"{what} header {header}")
        self.assertEqual(header["typ"], "JWT", f"{what} header {header}")
        self.assertIsInstance(header["kid"], str, f"{what} header {header}")
        self.assertRegex(header["kid"], r"\A[1-9][0-9]*\Z",
                         f"{what} kid must be a decimal integer string")
        for claim in ("iat", "exp"):
            self.assertIn(claim, claims, f"{what} claims {claims}")
            self.assertIs(type(claims[claim]), int,
                          f"{what} claim {claim} must be an integer: {claims}")
        return header, claims


class SharedServerTestCase(JwksdTestCase):
    """Base class for groups of read-only tests that can share one server.

    jwksd takes about 2 s to stop (CivetWeb's accept loop notices the stop
    only at its next poll timeout), so a server per test makes the suite
    slow. Tests in a subclass only read (tokens, the JWKS, error answers),
    never change the store or the server's flags; they share one server
    started on a fresh store in a fresh temporary directory for the class.
    The server is stopped (exit 0 asserted) in the class cleanup, and each
    test fails if the server died during it.
    """

    server_args = ()
    server_backend = BACKEND
    server = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        jwksd_bin()
        tmp = tempfile.TemporaryDirectory(prefix="jwksd-shared-")
        cls.addClassCleanup(tmp.cleanup)
        workdir = Path(tmp.name)
        store = store_for(workdir, cls.server_backend)
        if isinstance(store, PgStore):
            cls.addClassCleanup(store.drop)
        cls.server = Server(workdir, db=store, backend=cls.server_backend,
                            args=cls.server_args, label=f"shared-{cls.__name__}")
        cls.addClassCleanup(cls._stop_shared_server)
        cls.server.start()

    @classmethod
    def _stop_shared_server(cls):
        server = cls.server
        if server is not None and server.proc is not None:
            rc = server.stop()
            if rc != 0:
                raise AssertionError(f"jwksd exited with {rc} on SIGTERM, "
                                     f"expected 0{server.context()}")

    def setUp(self):
        super().setUp()
        self._servers.append(self.server)
        self.addCleanup(self._check_shared_server_alive)

    def _check_shared_server_alive(self):
        if not self.server.running:
            code = self.server.proc.returncode if self.server.proc else None
            raise AssertionError(f"the shared jwksd died during this test "
                                 f"(exit {code}){self.server.context()}")
