"""Store faults and secrets, on the backend from KS_TEST_BACKEND.

For every fault the server must either stop with exit 1 and one clear line
naming the store, or keep serving what it can (reads; 503 JSON for what
needs a write) -- and never silently recreate, drop, replace or regenerate
keys, which would orphan tokens already issued.

Store contents are compared as records {kid: (blob, exp)}: read directly
from the SQLite file, or, for LMDB, through `jwksd copy --from lmdb:...
--to sqlite:...` of a scratch copy (the store under test is never touched
by the reader).

Tests that need root (running jwksd as nobody, mounting a tmpfs) skip with
the reason when that is not possible.
"""

import base64
import os
import random
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import (
    sha256, as_bytes,
    AUTH_PATH, BACKEND, DEFAULT_STORE_NAMES, JWKS_PATH, LOOPBACK, JwksdTestCase,
    PgStore, Server, file_backends_only, free_port, http_request, int_from_b64url,
    jwks_kids, jwksd_bin, public_pem, raw_exchange, run_jwksd, split_jwt,
    sqlite_records, store_for,
)

STORE_NAME = DEFAULT_STORE_NAMES.get(BACKEND, "store")
SETPRIV = shutil.which("setpriv")
AS_NOBODY = [SETPRIV or "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
LMDB_COMPANIONS = ("-lock",)
SETTLE_TIMEOUT = 15.0  # from launch until the start line or the exit
# Nothing published ahead, no margin: with these, --key-ttl 2 or 3 is a valid
# schedule in which a new key signs every key ttl - token ttl seconds.
NO_PREPUBLICATION = ("--jwks-max-age", "0", "--margin", "0")


def companions(db, backend=BACKEND):
    """The store file and the companion files its backend may create."""
    suffixes = SQLITE_COMPANIONS if backend == "sqlite" else LMDB_COMPANIONS
    return [Path(db)] + [Path(f"{db}{suffix}") for suffix in suffixes]


def sqlite_readable_rows(path, kids):
    """The rows among kids that a damaged SQLite file still yields, read one
    by one (a corrupt page fails only the rows on it); never writes."""
    found = {}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, timeout=1)
    except sqlite3.Error:
        return found
    try:
        for kid in kids:
            try:
                row = con.execute("SELECT key, exp FROM keys WHERE kid = ?",
                                  (int(kid),)).fetchone()
            except sqlite3.Error:
                continue
            if row is not None:
                found[str(kid)] = (as_bytes(row[0]), row[1])
    finally:
        con.close()
    return found


def public_n(blob):
    """The RSA modulus of a PEM private key blob, or None if it does not load."""
    try:
        key = serialization.load_pem_private_key(blob, password=None)
    except (ValueError, TypeError):
        return None
    return key.public_key().public_numbers().n


def new_pem():
    """A fresh RSA-2048 private key as PKCS#1 PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def sqlite_store_with_one_expired_key(db):
    """A SQLite store (WAL mode) whose only key expired 10 minutes ago."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS keys(kid INTEGER PRIMARY KEY "
                    "AUTOINCREMENT, key BLOB NOT NULL, exp INTEGER NOT NULL)")
        con.execute("INSERT INTO keys (key, exp) VALUES (?, ?)",
                    (new_pem(), int(time.time()) - 600))
        con.commit()
    finally:
        con.close()
    os.chmod(db, 0o600)


def mentions(line, number):
    """Whether a log line names the integer number (not as part of another)."""
    return re.search(rf"(?<![0-9]){number}(?![0-9])", line) is not None


def needs_root_for(what):
    return unittest.skipUnless(os.geteuid() == 0, f"{what} needs root")


def needs_setpriv(cls_or_fn):
    reason = None
    if SETPRIV is None:
        reason = "setpriv (util-linux) is not installed"
    elif os.geteuid() != 0:
        reason = "running jwksd as nobody needs root"
    return unittest.skipIf(reason is not None, reason)(cls_or_fn)


# ----------------------------------------------------------------- base class

class FaultTestCase(JwksdTestCase):

    def readable_records(self, db, kids, backend=BACKEND):
        """What a possibly damaged store still yields, without touching it."""
        if backend == "sqlite":
            return sqlite_readable_rows(db, kids)
        if isinstance(db, PgStore):
            return self.store_records(db)
        copy = self.lmdb_as_sqlite(db, check=False)
        try:
            return {} if copy is None else sqlite_records(copy)
        except sqlite3.Error:
            return {}

    def make_store(self, directory, *args, expired_token=True, label="maker"):
        """A store made by jwksd itself (first start: one unexpired and one
        expired key), stopped cleanly. Returns its path."""
        db = store_for(directory)
        server = self.start_server(*args, db=db, workdir=directory, label=label)
        self.post_auth(server)
        if expired_token:
            self.post_auth(server, query="expired=true")
        self.stop_server(server)
        if isinstance(db, PgStore):
            return db
        for extra in companions(db)[1:]:
            if extra.name.endswith("-wal") and extra.exists():
                self.assertEqual(extra.stat().st_size, 0,
                                 f"{extra.name} still holds data after a clean stop")
        return db

    def settle(self, server, timeout=SETTLE_TIMEOUT):
        """Launch server and wait for its start line or its exit.

        Returns the exit code, or None when it is serving. A launch that
        lost its port to someone else is retried once.
        """
        for attempt in (1, 2):
            server.launch()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                rc = server.proc.poll()
                if rc is not None:
                    if "cannot listen" in server.stderr_text() and attempt == 1:
                        break
                    server.proc = None
                    server._close_files()
                    return rc
                if "listening on" in server.stderr_text():
                    return None
                time.sleep(0.05)
            else:
                self.failure(f"jwksd neither logged its start line nor exited within "
                             f"{timeout} s")
        self.failure("jwksd could not listen twice in a row")

    def assertClearFailure(self, rc, server, path, what):
        """Exit 1 and a stderr line naming the store path."""
        self.assertEqual(rc, 1, f"{what}: want exit 1, got {rc}")
        lines = server.stderr_lines()
        self.assertTrue(any(str(path) in line for line in lines),
                        f"{what}: no stderr line names the store {path}: {lines}")

    def assertPublishedKeysAreOriginalOrNew(self, jwks, original, what):
        """Every published kid is an original key with its original modulus,
        or a new key with a kid above every original one (never reused)."""
        top = max(int(k) for k in original)
        for jwk in jwks["keys"]:
            kid = jwk["kid"]
            if kid in original:
                self.assertEqual(int_from_b64url(jwk["n"]), public_n(original[kid][0]),
                                 f"{what}: kid {kid} is published with another key")
            else:
                self.assertGreater(int(kid), top,
                                   f"{what}: kid {kid} was reused or invented (original "
                                   f"kids {sorted(original, key=int)})")


# ------------------------------------------------------------ store location

@file_backends_only("store files in missing, unwritable or wrong paths")
class StoreLocationTests(FaultTestCase):

    def run_failing(self, db, prefix=(), cwd=None):
        port = free_port()
        res = run_jwksd(["--listen", f"{LOOPBACK}:{port}", "--backend", BACKEND,
                         "--db", str(db)], cwd=cwd or self.tmp, timeout=8.0,
                        watch_port=port, prefix=prefix)
        self.assertIsNotNone(res.returncode, f"jwksd did not exit:\n{res.describe()}")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertFalse(res.listened, f"listened although the store is unusable:\n"
                                       f"{res.describe()}")
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, f"want one clear stderr line:\n{res.describe()}")
        self.assertIn(str(db), lines[0], f"the line must name the store:\n{res.describe()}")
        return res

    def test_missing_directory_exits_1_and_creates_nothing(self):
        missing = self.tmp / "missing"
        self.run_failing(missing / "sub" / STORE_NAME)
        self.assertFalse(missing.exists(), "the missing directory was created")
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), [],
                         "files were created next to the missing directory")

    def test_store_path_is_a_directory_exits_1(self):
        directory = self.tmp / STORE_NAME
        directory.mkdir()
        self.run_failing(directory)
        self.assertEqual(list(directory.iterdir()), [], "wrote into the directory")
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), [STORE_NAME],
                         "created companion files next to the directory")

    @needs_setpriv
    def test_unwritable_directory_exits_1_and_creates_nothing(self):
        # As nobody, in a root-owned 0755 directory: the new store cannot be made.
        os.chmod(self.tmp, 0o755)
        directory = self.tmp / "ro"
        directory.mkdir(mode=0o755)
        self.run_failing(directory / STORE_NAME, prefix=AS_NOBODY, cwd=directory)
        self.assertEqual(list(directory.iterdir()), [], "created files in the directory")


# ------------------------------------------------------ unreachable database

@unittest.skipUnless(BACKEND == "postgres", "a database server that is not there: "
                     "postgres only (the file backends have StoreLocationTests)")
class UnreachableDatabaseTests(FaultTestCase):
    """No server at the conninfo: one clear line, exit 1, before listening,
    and a password in the conninfo never shows."""

    PASSWORD = "s3cr3t-pw-zz91"

    def run_failing(self, conninfo):
        port = free_port()
        started = time.monotonic()
        res = run_jwksd(["--listen", f"{LOOPBACK}:{port}", "--backend", BACKEND,
                         "--db", conninfo, "--pg-schema", "nowhere"],
                        cwd=self.tmp, timeout=20.0, watch_port=port)
        took = time.monotonic() - started
        self.assertIsNotNone(res.returncode, f"jwksd did not exit:\n{res.describe()}")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertFalse(res.listened, f"listened without a database:\n{res.describe()}")
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, f"want one clear stderr line:\n{res.describe()}")
        self.assertNotIn(self.PASSWORD, res.stderr + res.stdout, "the password leaked")
        print(f"\nunreachable database: exit 1 after {took:.2f} s", flush=True)
        return res, lines[0]

    def test_missing_socket_directory_exits_1_without_the_password(self):
        missing = self.tmp / "no-server-here"
        res, line = self.run_failing(
            f"host={missing} user=jwksd password={self.PASSWORD} dbname=postgres")
        self.assertIn(str(missing), line, f"the line must name the store:\n{res.describe()}")

    def test_uri_with_password_to_a_closed_port_exits_1_without_the_password(self):
        port = free_port()  # nothing listens there
        res, line = self.run_failing(
            f"postgresql://jwksd:{self.PASSWORD}@{LOOPBACK}:{port}/postgres"
            f"?connect_timeout=2")
        self.assertIn(str(port), line, f"the line must name the store:\n{res.describe()}")

    def test_keys_list_on_an_unreachable_database_exits_1_without_the_password(self):
        res = run_jwksd(["keys", "list", "--backend", BACKEND, "--db",
                         f"host={self.tmp / 'none'} user=x password={self.PASSWORD}",
                         "--pg-schema", "nowhere"], cwd=self.tmp, timeout=20.0)
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertNotIn(self.PASSWORD, res.stderr + res.stdout, "the password leaked")


# ------------------------------------------------------------- damaged store

@file_backends_only("truncated and corrupted store files")
class DamagedStoreTests(FaultTestCase):
    """Truncated and corrupted store files.

    LMDB trusts its file format: a corrupted page can crash liblmdb itself,
    so for LMDB only truncation is tested (jwksd checks the file size against
    the committed pages); byte corruption is tested on SQLite only.
    """

    template = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        jwksd_bin()
        tmp = tempfile.TemporaryDirectory(prefix="jwksd-template-")
        cls.addClassCleanup(tmp.cleanup)
        workdir = Path(tmp.name)
        server = Server(workdir, db=workdir / STORE_NAME, label="template")
        server.start()
        try:
            for path in (AUTH_PATH, AUTH_PATH + "?expired=true"):
                resp = server.request("POST", path)
                if resp.status != 200:
                    raise AssertionError(f"template store: POST {path}: {resp.describe()}")
        finally:
            rc = server.stop()
        if rc != 0:
            raise AssertionError(f"template server exited {rc}{server.context()}")
        cls.template = workdir / STORE_NAME

    def setUp(self):
        super().setUp()
        self.original = self.store_records(self.template)
        self.assertEqual(len(self.original), 2, f"template store: {list(self.original)}")

    def check_damaged(self, label, damage):
        workdir = self.make_tmpdir()
        db = workdir / STORE_NAME
        shutil.copyfile(self.template, db)
        os.chmod(db, 0o600)
        damage(db)
        damaged = db.read_bytes()
        inode = db.stat().st_ino
        # The original records the damage left intact (and readable).
        readable = {kid: record for kid, record in
                    self.readable_records(db, list(self.original)).items()
                    if record == self.original.get(kid)}

        server = self.new_server(db=db, workdir=workdir, label=label)
        rc = self.settle(server)
        if rc is not None:
            self.assertClearFailure(rc, server, db, label)
            self.assertEqual(db.stat().st_ino, inode, f"{label}: the store file was replaced")
            self.assertTrue(db.read_bytes() == damaged,
                            f"{label}: jwksd exited but changed the damaged store")
            return "exited"

        # It serves: only surviving original keys, or new keys with new kids.
        jwks = self.get_jwks(server)
        self.assertPublishedKeysAreOriginalOrNew(jwks, self.original, label)
        now = time.time()
        for kid, (blob, exp) in readable.items():
            if exp > now:
                self.assertIn(kid, jwks_kids(jwks),
                              f"{label}: the readable unexpired key {kid} is not published")
        resp = self.request(server, "POST", AUTH_PATH)
        issued = []
        if resp.status == 200:
            token = resp.json()["token"]
            self.verify_with_served_jwks(server, token)
            issued.append(split_jwt(token)[0]["kid"])
        else:
            self.assertJsonError(resp, 503, f"{label}: POST /auth")
        resp = self.request(server, "POST", AUTH_PATH + "?expired=true")
        if resp.status == 200:
            kid = split_jwt(resp.json()["token"])[0]["kid"]
            self.assertIn(kid, self.original, f"{label}: expired token from an unknown key")
            issued.append(kid)
        else:
            self.assertJsonError(resp, resp.status, f"{label}: POST /auth?expired=true")
            self.assertIn(resp.status, (404, 503), resp.describe())
        served_original = (set(jwks_kids(jwks)) | set(issued)) & set(self.original)
        self.assertTrue(served_original,
                        f"{label}: served without any original key (published "
                        f"{jwks_kids(jwks)}, issued {issued}): the damaged store was "
                        "treated as a new one")
        self.stop_server(server)
        self.assertEqual(db.stat().st_ino, inode, f"{label}: the store file was replaced")
        after = self.readable_records(db, list(self.original))
        for kid, record in readable.items():
            self.assertEqual(after.get(kid), record,
                             f"{label}: the readable original key {kid} was lost or changed")
        return "served"

    def test_truncated_to_half(self):
        self.check_damaged("truncated to half",
                           lambda db: os.truncate(db, db.stat().st_size // 2))

    def test_truncated_to_100_bytes(self):
        self.check_damaged("truncated to 100 bytes", lambda db: os.truncate(db, 100))

    def test_truncated_by_one_page(self):
        self.check_damaged("truncated by 4096 bytes",
                           lambda db: os.truncate(db, db.stat().st_size - 4096))

    @unittest.skipUnless(BACKEND == "sqlite",
                         "LMDB trusts its file format: corrupted pages can crash "
                         "liblmdb, so only truncation is tested for LMDB")
    def test_corrupted_middle(self):
        def corrupt(db):
            size = db.stat().st_size
            with open(db, "r+b") as f:
                f.seek(size // 2)
                f.write(b"\xde\xad\xbe\xef" * 128)
        self.check_damaged("512 bytes overwritten in the middle", corrupt)

    @unittest.skipUnless(BACKEND == "sqlite", "SQLite file format only")
    def test_corrupted_key_payload(self):
        # Bytes inside one key's PEM text: the row is readable but its key is
        # not the original; it must be skipped, never published as if it were.
        def corrupt(db):
            data = bytearray(db.read_bytes())
            start = data.find(b"-----BEGIN RSA PRIVATE KEY-----")
            self.assertGreater(start, 0, "no PEM found in the template store")
            pos = start + 200
            data[pos:pos + 40] = b"A" * 40
            db.write_bytes(bytes(data))
        self.check_damaged("40 bytes of one key's PEM overwritten", corrupt)


# ------------------------------------------------------------ read-only store

@file_backends_only("a store file of mode 0400")
@needs_setpriv
class ReadOnlyStoreTests(FaultTestCase):
    """The store file is mode 0400 and jwksd runs as nobody (as root, file
    permissions would not matter)."""

    def make_readonly(self, db):
        os.chmod(self.tmp, 0o755)
        os.chmod(db.parent, 0o755)
        for path in companions(db):
            if path.exists():
                shutil.chown(path, "nobody", "nogroup")
        os.chmod(db, 0o400)

    def run_readonly(self, db, label):
        server = self.new_server(db=db, workdir=db.parent, label=label)
        server.prefix = AS_NOBODY
        before = sha256(db)
        rc = self.settle(server)
        return server, rc, before

    def assertUnchanged(self, db, before, label):
        self.assertEqual(sha256(db), before, f"{label}: the read-only store changed")
        self.assertEqual(stat.S_IMODE(db.stat().st_mode), 0o400,
                         f"{label}: the store's mode changed")

    def test_read_only_store_with_an_unexpired_key(self):
        directory = self.make_tmpdir()
        db = self.make_store(directory)
        original = self.store_records(db)
        unexpired = sorted(k for k, (_, exp) in original.items() if exp > time.time())
        self.make_readonly(db)
        label = "read-only store with an unexpired key"
        server, rc, before = self.run_readonly(db, label)
        if rc is not None:
            self.assertClearFailure(rc, server, db, label)
        else:
            jwks = self.get_jwks(server)
            self.assertEqual(sorted(jwks_kids(jwks)), unexpired,
                             f"{label}: published keys differ from the store's")
            _, token = self.post_auth(server)
            self.assertIn(split_jwt(token)[0]["kid"], unexpired)
            self.verify_with_served_jwks(server, token)
            self.stop_server(server)
        self.assertUnchanged(db, before, label)

    def test_read_only_store_with_only_expired_keys(self):
        directory = self.make_tmpdir()
        db = self.make_store(directory, "--key-ttl", "2", "--token-ttl", "1",
                             *NO_PREPUBLICATION, expired_token=False)
        original = self.store_records(db)
        time.sleep(max(0.0, max(exp for _, exp in original.values()) + 1.2 - time.time()))
        self.make_readonly(db)
        label = "read-only store with only expired keys"
        server, rc, before = self.run_readonly(db, label)
        if rc is not None:
            self.assertClearFailure(rc, server, db, label)
        else:
            resp = self.request(server, "POST", AUTH_PATH)
            self.assertJsonError(resp, 503, f"{label}: POST /auth needs a new key")
            jwks = self.get_jwks(server)
            self.assertEqual(jwks_kids(jwks), [], f"{label}: expired keys published")
            self.assertTrue(server.running, f"{label}: the server died")
            self.stop_server(server)
        self.assertUnchanged(db, before, label)


# ---------------------------------------------------------------- SQLite lock

@unittest.skipUnless(BACKEND == "sqlite", "SQLite's write lock and busy timeout")
class SqliteWriteLockTests(FaultTestCase):
    """Another process holds SQLite's write lock (BEGIN EXCLUSIVE in WAL mode,
    which still lets readers read)."""

    BUSY_TIMEOUT = 5.0

    def precreate_expired(self, db):
        sqlite_store_with_one_expired_key(db)

    def hold_write_lock(self, db):
        con = sqlite3.connect(db, isolation_level=None, timeout=0)
        con.execute("BEGIN EXCLUSIVE")
        self.addCleanup(con.close)
        return con

    def test_lock_held_at_start_when_a_key_must_be_written(self):
        """The only key is expired, so jwksd must write one at start.

        Observed and accepted: jwksd listens, waits the busy timeout (5 s)
        for the lock, then exits 1 with one line naming the store ("store is
        busy"). Also accepted: still waiting, then serving once the lock is
        released. Either way the store is unchanged while locked.
        """
        db = self.tmp / STORE_NAME
        self.precreate_expired(db)
        before = sqlite_records(db)
        lock = self.hold_write_lock(db)
        server = self.new_server(db=db)
        launched = time.monotonic()
        rc = self.settle(server, timeout=self.BUSY_TIMEOUT + 10)
        waited = time.monotonic() - launched
        self.assertEqual(sqlite_records(db), before, "the store changed while locked")
        if rc is not None:
            self.assertClearFailure(rc, server, db, "write lock held at start")
            self.assertGreaterEqual(waited, self.BUSY_TIMEOUT - 1.0,
                                    f"gave up after {waited:.1f} s, before the busy "
                                    f"timeout of {self.BUSY_TIMEOUT} s")
            lock.rollback()
            return
        self.failure(f"jwksd logged its start line after {waited:.1f} s although the "
                     "only key is expired and the store is locked")

    def test_reads_keep_working_while_the_lock_is_held(self):
        server = self.start_server()
        _, token = self.post_auth(server)
        db = server.db
        before = sqlite_records(db)
        lock = self.hold_write_lock(db)
        deadline = time.monotonic() + 2.0
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            self.verify_with_served_jwks(server, token)
            _, fresh = self.post_auth(server)
            self.verify_with_served_jwks(server, fresh)
            # The first expired=true reads the store (under the lock).
            _, expired = self.post_auth(server, query="expired=true")
            self.assertLess(split_jwt(expired)[1]["exp"], time.time())
        self.assertTrue(server.running, "the server died while the store was locked")
        self.assertEqual(sqlite_records(db), before, "the store changed while locked")
        lock.rollback()
        self.assertGreater(rounds, 3)


@unittest.skipUnless(BACKEND == "postgres", "jwksd's advisory write lock on PostgreSQL "
                     "(SQLite: SqliteWriteLockTests)")
class PgWriteLockTests(FaultTestCase):
    """Another session holds the advisory lock that jwksd's write
    transactions take (harness.PgStore.hold_write_lock)."""

    BUSY_TIMEOUT = 5.0

    def hold(self, store, seconds):
        proc = store.hold_write_lock(seconds)

        def release():
            proc.kill()
            proc.wait()
            proc.stderr.close()
        self.addCleanup(release)
        return release

    def test_lock_held_at_start_when_a_key_must_be_written(self):
        """The only key is expired (copied in from SQLite), so jwksd must
        write one at start: with the lock held it waits the busy timeout,
        then exits 1 with one line naming the store; the store is unchanged."""
        src = self.tmp / "expired.db"
        sqlite_store_with_one_expired_key(src)
        store = self.store_path()
        res = run_jwksd(["copy", "--from", f"sqlite:{src}", "--to", f"postgres:{store}"],
                        cwd=self.tmp, timeout=30)
        self.assertEqual(res.returncode, 0, res.describe())
        before = self.store_records(store)
        self.assertEqual(len(before), 1, before)
        release = self.hold(store, 60)
        server = self.new_server(db=store)
        launched = time.monotonic()
        rc = self.settle(server, timeout=self.BUSY_TIMEOUT + 10)
        waited = time.monotonic() - launched
        self.assertEqual(self.store_records(store), before, "the store changed while locked")
        release()
        if rc is not None:
            self.assertClearFailure(rc, server, store.schema, "write lock held at start")
            self.assertGreaterEqual(waited, self.BUSY_TIMEOUT - 1.0,
                                    f"gave up after {waited:.1f} s, before the busy "
                                    f"timeout of {self.BUSY_TIMEOUT} s")
            return
        self.failure(f"jwksd logged its start line after {waited:.1f} s although the "
                     "only key is expired and the store is locked")

    def test_reads_keep_working_while_the_lock_is_held(self):
        server = self.start_server()
        _, token = self.post_auth(server)
        store = server.db
        before = self.store_records(store)
        release = self.hold(store, 60)
        deadline = time.monotonic() + 2.0
        rounds, slowest = 0, 0.0
        while time.monotonic() < deadline:
            rounds += 1
            started = time.monotonic()
            self.verify_with_served_jwks(server, token)
            _, fresh = self.post_auth(server)
            self.verify_with_served_jwks(server, fresh)
            _, expired = self.post_auth(server, query="expired=true")
            self.assertLess(split_jwt(expired)[1]["exp"], time.time())
            slowest = max(slowest, time.monotonic() - started)
        self.assertTrue(server.running, "the server died while the store was locked")
        self.assertEqual(self.store_records(store), before, "the store changed while locked")
        release()
        self.assertGreater(rounds, 3)
        self.assertLess(slowest, 1.0, "a round of requests waited on the locked store")


# --------------------------------------------------------- undecodable record

class UndecodableKeyTests(FaultTestCase):
    """One record whose blob is not a key (b"garbage"); for LMDB it is made
    with `jwksd copy` from a SQLite store holding such a row."""

    def store_with_garbage(self, garbage_exp):
        """(db, original records without the bad one, bad kid)."""
        src_dir = self.make_tmpdir()
        src = self.tmp / "source.db"
        server = self.start_server(db=src, backend="sqlite", workdir=src_dir, label="source")
        self.post_auth(server)
        self.stop_server(server)
        original = sqlite_records(src)
        con = sqlite3.connect(src)
        try:
            bad = con.execute("INSERT INTO keys (key, exp) VALUES (?, ?)",
                              (b"garbage", garbage_exp)).lastrowid
            con.commit()
        finally:
            con.close()
        if BACKEND == "sqlite":
            return src, original, str(bad)
        db = self.store_path()
        res = run_jwksd(["copy", "--from", f"sqlite:{src}", "--to", f"{BACKEND}:{db}"],
                        cwd=self.tmp, timeout=30)
        self.assertEqual(res.returncode, 0, res.describe())
        return db, original, str(bad)

    def assertLogsKid(self, server, kid):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            lines = [line for line in server.stderr_lines()
                     if mentions(line, kid) and "listening on" not in line]
            if lines:
                return lines
            time.sleep(0.05)
        self.failure(f"no log line names the undecodable key {kid}")

    def assertBadRowKept(self, db, kid):
        records = self.store_records(db)
        self.assertIn(kid, records, "the undecodable record was removed")
        self.assertEqual(records[kid][0], b"garbage", "the undecodable record was changed")

    def test_unexpired_undecodable_key_is_skipped_and_logged(self):
        # It would expire last, so it would be the signing key if it loaded.
        db, original, bad = self.store_with_garbage(int(time.time()) + 30 * 86400)
        good = sorted(k for k, (_, exp) in original.items() if exp > time.time())
        server = self.start_server(db=db)
        jwks = self.get_jwks(server)
        self.assertEqual(sorted(jwks_kids(jwks)), good,
                         "the JWKS must list the decodable unexpired keys only")
        _, token = self.post_auth(server)
        self.assertIn(split_jwt(token)[0]["kid"], good)
        self.verify_with_served_jwks(server, token)
        self.assertLogsKid(server, bad)
        self.stop_server(server)
        self.assertBadRowKept(db, bad)

    def test_expired_undecodable_key_does_not_hide_the_good_expired_key(self):
        # The bad record expired more recently than the good expired key, so it
        # is the first candidate for ?expired=true; the good one must be used.
        db, original, bad = self.store_with_garbage(int(time.time()) - 60)
        good_expired = [k for k, (_, exp) in original.items() if exp <= time.time()]
        self.assertEqual(len(good_expired), 1, original.keys())
        server = self.start_server(db=db)
        resp = self.request(server, "POST", AUTH_PATH + "?expired=true")
        self.assertEqual(resp.status, 200,
                         f"POST /auth?expired=true with one undecodable expired key "
                         f"(kid {bad}) and a good one (kid {good_expired[0]}): "
                         f"{resp.describe()}")
        token = resp.json()["token"]
        self.assertEqual(split_jwt(token)[0]["kid"], good_expired[0])
        jwt.decode(token, public_pem(original[good_expired[0]][0]), algorithms=["RS256"],
                   options={"verify_exp": False})
        self.assertLogsKid(server, bad)
        self.get_jwks(server)
        self.post_auth(server)
        self.stop_server(server)
        self.assertBadRowKept(db, bad)


# ------------------------------------------------------------------ full disk

@unittest.skipUnless(BACKEND == "sqlite",
                     "a full disk is tested with SQLite; the full LMDB map is "
                     "covered by test_backends.LmdbMapFullTests")
@needs_root_for("mounting a tmpfs")
class FullDiskTests(FaultTestCase):

    def mount_tmpfs(self, size="256k"):
        mnt = self.make_tmpdir() / "mnt"
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                              "tmpfs", str(mnt)], capture_output=True, text=True)
        if res.returncode != 0:
            self.skipTest(f"mount -t tmpfs is not permitted here: {res.stderr.strip()}")
        self.addCleanup(self.unmount, mnt)
        return mnt

    @staticmethod
    def unmount(mnt):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

    def fill(self, mnt, leave):
        """Fill the file system but for about leave bytes; returns the filler."""
        filler = mnt / "filler"
        st = os.statvfs(mnt)
        todo = max(0, st.f_bavail * st.f_frsize - leave)
        with open(filler, "wb") as f:
            while todo > 0:
                n = min(todo, 64 * 1024)
                try:
                    f.write(b"\0" * n)
                    f.flush()
                except OSError:
                    break
                todo -= n
        return filler

    def test_full_disk_is_logged_and_reads_keep_working(self):
        mnt = self.mount_tmpfs()
        db = mnt / STORE_NAME
        # Keys that live 2 s and sign for 1 s: jwksd adds one about every second.
        server = self.start_server("--key-ttl", "2", "--token-ttl", "1",
                                   *NO_PREPUBLICATION, db=db)
        seen = {}
        _, token = self.post_auth(server)
        seen[split_jwt(token)[0]["kid"]] = token
        filler = self.fill(mnt, leave=16 * 1024)
        deadline = time.monotonic() + 30
        failure_line = None
        while time.monotonic() < deadline and failure_line is None:
            self.assertTrue(server.running, "jwksd died when the disk filled up")
            for jwk in self.get_jwks(server)["keys"]:
                seen.setdefault(jwk["kid"], None)
            for line in server.stderr_lines():
                if re.search(r"(?i)full|no space|ENOSPC", line):
                    failure_line = line
            time.sleep(0.2)
        self.assertIsNotNone(failure_line, "no log line about the full disk within 30 s")
        # Reads keep working; a token needs a key that may no longer exist.
        self.get_jwks(server)
        resp = self.request(server, "POST", AUTH_PATH)
        if resp.status == 200:
            self.verify_with_served_jwks(server, resp.json()["token"])
        else:
            self.assertJsonError(resp, 503, "POST /auth on a full disk")
        self.assertTrue(server.running, "jwksd died when the disk filled up")
        # Space again: it recovers (a retry is due within about 5 s).
        filler.unlink()
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            resp = self.request(server, "POST", AUTH_PATH)
            if resp.status == 200:
                break
            time.sleep(0.3)
        self.assertEqual(resp.status, 200, f"no token after space was freed: "
                                           f"{resp.describe()}")
        self.stop_server(server)
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            (check,), = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
        self.assertEqual(check, "ok", "integrity check after a full disk")
        records = sqlite_records(db)
        lost = sorted(set(seen) - set(records), key=int)
        self.assertEqual(lost, [], "kids published before the disk filled are gone")


# ----------------------------------------------------------- SIGKILL in writes

class KillDuringWritesTests(FaultTestCase):

    MAX_ITERATIONS = 50
    TIME_BUDGET = 30.0
    FRESH_EVERY = 4  # every 4th launch is on a new, empty store
    MIN_SEEN = 3  # kids clients must have seen for the loop to mean anything

    def test_sigkill_during_key_writes_loses_nothing_seen(self):
        seed = int(time.time())
        rng = random.Random(seed)
        (self.tmp / "main").mkdir()
        main_store = store_for(self.tmp / "main")
        workdirs = {main_store: self.tmp / "main"}
        stores = [main_store]
        seen = {}    # store -> {kid: modulus or None}
        tokens = {}  # store -> {kid: token}
        errors = []
        started = time.monotonic()
        iterations = 0
        def seen_enough():
            return sum(len(s) for s in seen.values()) >= self.MIN_SEEN

        # A loaded machine starts servers slowly, and a kill may come
        # before one answered: go on (up to three budgets) until clients
        # saw enough keys for the loop to prove something.
        while ((iterations < self.MAX_ITERATIONS
                and time.monotonic() - started < self.TIME_BUDGET)
               or (not seen_enough()
                   and time.monotonic() - started < 3 * self.TIME_BUDGET)):
            iterations += 1
            if iterations % self.FRESH_EVERY == 0:
                fresh_dir = self.tmp / f"fresh{iterations}"
                fresh_dir.mkdir()
                db = store_for(fresh_dir)
                workdirs[db] = fresh_dir
                stores.append(db)
            else:
                db = main_store
            # Keys that live 2 s and sign for 1 s: a key write about every second.
            server = Server(workdirs[db], db=db,
                            args=["--key-ttl", "2", "--token-ttl", "1", *NO_PREPUBLICATION],
                            label=f"kill{iterations}")
            stop = threading.Event()
            store_seen = seen.setdefault(db, {})
            store_tokens = tokens.setdefault(db, {})

            def client(server=server, stop=stop, store_seen=store_seen,
                       store_tokens=store_tokens):
                while not stop.is_set():
                    try:
                        resp = http_request(server.port, "GET", JWKS_PATH, timeout=2)
                        if resp.status == 200:
                            for jwk in resp.json()["keys"]:
                                store_seen[jwk["kid"]] = int_from_b64url(jwk["n"])
                        resp = http_request(server.port, "POST", AUTH_PATH, timeout=2)
                        if resp.status == 200:
                            token = resp.json()["token"]
                            kid = split_jwt(token)[0]["kid"]
                            store_seen.setdefault(kid, None)
                            store_tokens.setdefault(kid, token)
                        elif resp.status >= 500 and resp.status != 503:
                            errors.append(resp.describe())
                    except (OSError, ValueError, KeyError):
                        stop.wait(0.01)

            try:
                server.launch()
                reader = threading.Thread(target=client, daemon=True)
                reader.start()
                time.sleep(rng.uniform(0.0, 0.8))
                server.proc.kill()
                server.proc.wait()
                stop.set()
                reader.join(5)
            finally:
                stop.set()
                server.kill()
        what = (f"after {iterations} SIGKILLs in {time.monotonic() - started:.1f} s "
                f"(random seed {seed})")
        self.assertEqual(errors, [], f"5xx other than 503 {what}")
        total_seen = sum(len(s) for s in seen.values())
        self.assertGreaterEqual(total_seen, self.MIN_SEEN, f"clients saw almost no keys {what}: the "
                                               "loop proved nothing")

        # A normal start on the main store works and keeps every kid seen.
        server = self.start_server(db=main_store, workdir=workdirs[main_store],
                                   label="after")
        self.get_jwks(server)
        _, token = self.post_auth(server)
        self.verify_with_served_jwks(server, token)
        self.stop_server(server)

        for db in stores:
            with self.subTest(store=str(workdirs[db].relative_to(self.tmp))):
                self.check_store(db, seen.get(db, {}), tokens.get(db, {}), what)

    def check_store(self, db, seen, tokens, what):
        if isinstance(db, PgStore):
            has_table = db.exists() and db.psql(
                "SELECT to_regclass('keys') IS NOT NULL").strip() == "t"
            if not has_table:
                self.assertEqual(seen, {}, f"no keys table but kids were seen {what}")
                return
        if BACKEND == "sqlite" and db.exists():
            # Read-write: a WAL left by a killed writer needs recovery,
            # which any next opener (jwksd included) performs; a read-only
            # connection cannot, and fails with "readonly database".
            con = sqlite3.connect(f"file:{db}?mode=rw", uri=True)
            try:
                (check,), = con.execute("PRAGMA integrity_check").fetchall()
                has_table = con.execute("SELECT count(*) FROM sqlite_master WHERE "
                                        "name = 'keys'").fetchone()[0]
            finally:
                con.close()
            self.assertEqual(check, "ok", f"integrity check of {db.name} {what}")
            if not has_table:
                self.assertEqual(seen, {}, f"no keys table but kids were seen {what}")
                return
        if not seen:
            return
        records = self.store_records(db)
        for kid, modulus in sorted(seen.items(), key=lambda item: int(item[0])):
            self.assertIn(kid, records, f"kid {kid} was seen by a client but is not "
                                        f"in the store {what}")
            blob = records[kid][0]
            if modulus is not None:
                self.assertEqual(public_n(blob), modulus,
                                 f"kid {kid} holds another key than the one published {what}")
            if kid in tokens:
                try:
                    jwt.decode(tokens[kid], public_pem(blob), algorithms=["RS256"],
                               options={"verify_exp": False})
                except jwt.PyJWTError as exc:
                    self.failure(f"a token signed by kid {kid} does not verify with "
                                 f"the stored key {what}: {exc!r}")


# -------------------------------------------------------------------- secrets

class SecretsTests(FaultTestCase):

    @file_backends_only("modes of store files")
    def test_store_files_are_0600_even_with_umask_0(self):
        server = self.new_server()
        server.umask = 0
        server.start()
        self.post_auth(server)
        self.post_auth(server, query="expired=true")
        db = server.db

        def check(when):
            present = [p for p in companions(db) if p.exists()]
            self.assertIn(db, present, f"{db} was not created")
            for path in present:
                self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600,
                                 f"{path.name} {when} has mode "
                                 f"{oct(stat.S_IMODE(path.stat().st_mode))}, want 0600")
            return present
        present = check("while running")
        if BACKEND == "lmdb":
            self.assertIn(Path(f"{db}-lock"), present, "no LMDB lock file while running")
        self.stop_server(server)
        check("after stop")

    def test_no_private_key_material_in_answers_or_logs(self):
        server = self.start_server("--key-ttl", "3", "--token-ttl", "2", *NO_PREPUBLICATION)
        port = server.port
        outputs = []

        def keep(resp):
            outputs.append(repr(resp.headers).encode() + resp.body)
            return resp
        keep(self.post_auth(server)[0])
        keep(self.post_auth(server, query="expired=true")[0])
        for method, path in [("GET", JWKS_PATH), ("HEAD", JWKS_PATH), ("GET", AUTH_PATH),
                             ("POST", JWKS_PATH), ("GET", "/"), ("GET", f"/{STORE_NAME}"),
                             ("POST", AUTH_PATH + "?expired=maybe"), ("DELETE", AUTH_PATH),
                             ("GET", "/.well-known/jwks.json?x=../../" + STORE_NAME)]:
            keep(self.request(server, method, path))
        raw = [b"GARBAGE\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
               b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n",
               b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
               b"GET /auth HTTP/1.1\r\n\r\n"]
        for data in raw:
            outputs.append(raw_exchange(port, data, timeout=3)[0])
        # A key rotation happens (a key signs for 1 s) while we keep asking.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            resp = self.request(server, "POST", AUTH_PATH)
            keep(resp)
            time.sleep(0.25)
        self.stop_server(server)
        outputs.append(server.stderr_text().encode())
        for path in server.workdir.iterdir():
            if path.name.endswith(".log"):
                outputs.append(path.read_bytes())
        blob = b"\n".join(outputs)

        records = self.store_records(server.db)
        self.assertGreaterEqual(len(records), 3, "expected a rotation to add a key")
        self.assertNotIn(b"PRIVATE KEY", blob, "a PEM header leaked")
        for kid, (pem, _) in records.items():
            for needle in self.secret_needles(pem):
                self.assertNotIn(needle, blob,
                                 f"private material of key {kid} leaked: {needle[:16]!r}...")

    @staticmethod
    def secret_needles(pem):
        """Substrings that only a leak of this private key would produce: the
        PEM's base64 lines that do not merely encode the public modulus, and
        the private numbers (d, p, q, dp, dq, qi) in base64, base64url, hex."""
        key = serialization.load_pem_private_key(pem, password=None)
        numbers = key.private_numbers()
        n = numbers.public_numbers.n
        n_bytes = n.to_bytes((n.bit_length() + 7) // 8, "big")
        needles = []
        for line in pem.splitlines():
            if len(line) != 64 or line.startswith(b"-----"):
                continue
            if base64.b64decode(line) not in n_bytes:  # a public line is no secret
                needles.append(line)
        for value in (numbers.d, numbers.p, numbers.q, numbers.dmp1, numbers.dmq1,
                      numbers.iqmp):
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            needles.append(base64.urlsafe_b64encode(raw).rstrip(b"=")[:32])
            needles.append(base64.b64encode(raw)[:32])
            needles.append(raw.hex().encode()[:32])
        return needles

    def test_listens_on_loopback_only(self):
        res = run_jwksd(["--help"], cwd=self.tmp)
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertRegex(res.stdout, r"--listen[^\n]*\(default 127\.0\.0\.1:8080\)",
                         f"--help must give 127.0.0.1:8080 as the default:\n{res.stdout}")
        server = self.start_server()
        self.get_jwks(server)
        others = ["127.0.0.2", "127.1.2.3"] + local_non_loopback_ipv4()
        for address in others:
            with self.subTest(address=address):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1.0)
                    code = sock.connect_ex((address, server.port))
                self.assertNotEqual(code, 0, f"the server listening on {LOOPBACK} "
                                             f"accepts connections on {address}")
        if socket.has_ipv6:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                self.assertNotEqual(sock.connect_ex(("::1", server.port)), 0,
                                    "reachable on ::1")


def local_non_loopback_ipv4():
    """This machine's own IPv4 addresses other than 127/8 (from /proc)."""
    found = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        if "/32 host LOCAL" in line and i > 0:
            address = lines[i - 1].split()[-1]
            if not address.startswith("127."):
                found.add(address)
    return sorted(found)


if __name__ == "__main__":
    unittest.main()
