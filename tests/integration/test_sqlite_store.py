"""jwksd with the SQLite backend: the store file as the assignment's tools see it.

These tests read (and, for interop, pre-create) totally_not_my_privateKeys.db
with Python's sqlite3 module, so the backend is pinned to sqlite.
"""

import os
import sqlite3
import stat
import time
import unittest

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import (
    as_bytes,
    AUTH_PATH, LOOPBACK, REPO_ROOT, JwksdTestCase, SharedServerTestCase,
    free_port, int_from_b64url, jwk_for_kid, jwks_kids, load_private, public_pem,
    run_jwksd,
)

BACKEND = "sqlite"
STORE_NAME = "totally_not_my_privateKeys.db"
PEM_HEADER = b"-----BEGIN RSA PRIVATE KEY-----"
ASSIGNMENT_SCHEMA = ("CREATE TABLE IF NOT EXISTS keys("
                     "kid INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "key BLOB NOT NULL, exp INTEGER NOT NULL)")
INSERT_KEY = "INSERT INTO keys (key, exp) VALUES (?, ?)"
# The account tables exactly as the follow-up assignment (and issue 12)
# defines them, as sqlite_master keeps their SQL.
ASSIGNMENT_USERS = ("CREATE TABLE users("
                    "id INTEGER PRIMARY KEY AUTOINCREMENT, "
                    "username TEXT NOT NULL UNIQUE, "
                    "password_hash TEXT NOT NULL, "
                    "email TEXT UNIQUE, "
                    "date_registered TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
                    "last_login TIMESTAMP)")
ASSIGNMENT_AUTH_LOGS = ("CREATE TABLE auth_logs("
                        "id INTEGER PRIMARY KEY AUTOINCREMENT, "
                        "request_ip TEXT NOT NULL, "
                        "request_timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
                        "user_id INTEGER, "
                        "FOREIGN KEY(user_id) REFERENCES users(id))")

_pem_cache = []


def pkcs1_pem(index):
    """The index-th RSA-2048 private key as PKCS#1 PEM (generated once per run)."""
    while len(_pem_cache) <= index:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _pem_cache.append(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
    return _pem_cache[index]


class SqliteHelpers:
    """Reading and pre-creating the store file self.db (a mixin)."""

    db = None

    def connect(self, readonly=True):
        mode = "ro" if readonly else "rwc"
        con = sqlite3.connect(f"file:{self.db}?mode={mode}", uri=True, timeout=5)
        self.addCleanup(con.close)
        return con

    def rows(self):
        """[(kid, typeof(key), key as bytes, exp)] ordered by kid; the
        connection is closed again before returning."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return [(kid, kind, as_bytes(key), exp) for kid, kind, key, exp in
                    con.execute("SELECT kid, typeof(key), key, exp FROM keys ORDER BY kid")]
        finally:
            con.close()

    def row(self, kid):
        for row in self.rows():
            if str(row[0]) == str(kid):
                return row
        self.failure(f"no row with kid {kid} in the store")

    def precreate(self, keys):
        """Create the store the way the assignment's Python does; keys is
        [(pem bytes or str, exp)]. Returns the kids assigned."""
        con = sqlite3.connect(self.db)
        try:
            con.execute(ASSIGNMENT_SCHEMA)
            kids = [con.execute(INSERT_KEY, (pem, exp)).lastrowid for pem, exp in keys]
            con.commit()
        finally:
            con.close()
        return kids

    def assertVerifiesWithPem(self, token, pem, verify_exp=True, what="token"):
        try:
            return jwt.decode(token, public_pem(pem), algorithms=["RS256"],
                              options={"verify_exp": verify_exp})
        except jwt.PyJWTError as exc:
            self.failure(f"{what} does not verify with the stored key: {exc!r}")


class SqliteStoreTestCase(SqliteHelpers, JwksdTestCase):
    """A fresh store path per test; servers started with start_sqlite()."""

    def setUp(self):
        super().setUp()
        self.db = self.tmp / STORE_NAME

    def start_sqlite(self, *args, label="jwksd"):
        return self.start_server(*args, db=self.db, backend=BACKEND, label=label)


class SharedSqliteTestCase(SqliteHelpers, SharedServerTestCase):
    """Read-only tests sharing one server on a fresh SQLite store."""

    server_backend = BACKEND

    def setUp(self):
        super().setUp()
        self.db = self.server.db


class StoreFileTests(SqliteStoreTestCase):

    def test_store_file_mode_is_0600(self):
        server = self.start_sqlite()
        self.post_auth(server)
        self.assertTrue(self.db.exists(), f"{self.db} was not created")
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = self.db.with_name(self.db.name + suffix)
            if path.exists():
                with self.subTest(file=path.name, running=True):
                    self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600,
                                     f"{path.name} mode {oct(path.stat().st_mode)}")
        self.stop_server(server)
        self.assertEqual(stat.S_IMODE(self.db.stat().st_mode), 0o600)

    def test_schema_is_exactly_the_assignment_schema(self):
        server = self.start_sqlite()
        self.post_auth(server)
        con = self.connect()
        columns = [(name, ctype.upper(), notnull, pk) for _, name, ctype, notnull, _, pk
                   in con.execute("PRAGMA table_info(keys)")]
        self.assertEqual([c[0] for c in columns], ["kid", "key", "exp"],
                         f"keys columns {columns}")
        kid, key, exp = columns
        self.assertEqual((kid[1], kid[3]), ("INTEGER", 1), f"kid column {kid}")
        self.assertEqual(key, ("key", "BLOB", 1, 0), f"key column {key}")
        self.assertEqual(exp, ("exp", "INTEGER", 1, 0), f"exp column {exp}")
        (sql,), = con.execute("SELECT sql FROM sqlite_master "
                              "WHERE type = 'table' AND name = 'keys'")
        self.assertIn("AUTOINCREMENT", sql.upper(), f"keys table SQL: {sql}")

    def test_account_tables_are_exactly_the_assignment_ddl(self):
        server = self.start_sqlite()
        self.post_auth(server)
        con = self.connect()
        tables = dict(con.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        self.assertEqual(tables.get("users"), ASSIGNMENT_USERS)
        self.assertEqual(tables.get("auth_logs"), ASSIGNMENT_AUTH_LOGS)
        # What they cannot hold lives in tables of its own.
        self.assertIn("user_locks", tables)
        self.assertIn("auth_log_results", tables)
        for name in ("users", "auth_logs"):
            self.assertEqual(
                [row for row in con.execute(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (name,))], [], f"an index of our own on {name}")

    def test_store_with_the_assignment_account_tables_works(self):
        """A store the assignment's own tools made, account tables and rows
        included, serves as it is and keeps those rows unchanged."""
        pem = pkcs1_pem(0)
        self.precreate([(pem, int(time.time()) + 3 * 86400)])
        con = sqlite3.connect(self.db)
        con.execute(ASSIGNMENT_USERS.replace("CREATE TABLE",
                                             "CREATE TABLE IF NOT EXISTS"))
        con.execute(ASSIGNMENT_AUTH_LOGS.replace("CREATE TABLE",
                                                 "CREATE TABLE IF NOT EXISTS"))
        con.execute("INSERT INTO users (username, password_hash, email) "
                    "VALUES ('alice', 'x', 'a@example.org')")
        con.execute("INSERT INTO auth_logs (request_ip, user_id) "
                    "VALUES ('127.0.0.1', 1)")
        con.commit()
        before = (list(con.execute("SELECT * FROM users")),
                  list(con.execute("SELECT * FROM auth_logs")))
        con.close()
        server = self.start_sqlite()
        _, token = self.post_auth(server)
        self.verify_with_served_jwks(server, token)
        self.stop_server(server)
        con = self.connect()
        self.assertEqual((list(con.execute("SELECT * FROM users")),
                          list(con.execute("SELECT * FROM auth_logs"))), before)
        self.assertEqual(con.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'users'").fetchone()[0],
            ASSIGNMENT_USERS)

    def test_wal_mode_and_a_concurrent_reader(self):
        server = self.start_sqlite()
        self.post_auth(server)
        con = self.connect()
        (mode,), = con.execute("PRAGMA journal_mode")
        self.assertEqual(mode.lower(), "wal", "the store is not in WAL mode")
        # A second process holding a read transaction does not disturb the server.
        con.execute("BEGIN")
        con.execute("SELECT count(*) FROM keys").fetchall()
        _, token = self.post_auth(server)
        self.verify_with_served_jwks(server, token)
        con.rollback()

    def test_source_has_the_insert_statement_graders_scan_for(self):
        source = REPO_ROOT / "backends" / "sqlite.c"
        lines = source.read_text(errors="replace").splitlines()
        self.assertTrue(any(INSERT_KEY in line for line in lines),
                        f"{source} has no line containing {INSERT_KEY!r}")


class FirstStartTests(SharedSqliteTestCase):

    def test_first_start_makes_one_unexpired_and_one_expired_pkcs1_key(self):
        server = self.server
        self.post_auth(server)
        now = time.time()
        rows = self.rows()
        self.assertEqual(len(rows), 2, f"rows after first start: {[r[0] for r in rows]}")
        self.assertEqual(sum(1 for r in rows if r[3] > now), 1, "unexpired keys")
        self.assertEqual(sum(1 for r in rows if r[3] <= now), 1, "expired keys")
        for kid, _, key, _ in rows:
            with self.subTest(kid=kid):
                self.assertGreater(kid, 0)
                self.assertTrue(key.startswith(PEM_HEADER),
                                f"key {kid} is not PKCS#1 PEM: {key[:40]!r}")
                private = load_private(key)
                self.assertIsInstance(private, rsa.RSAPrivateKey)
                self.assertEqual(private.key_size, 2048)
                self.assertEqual(private.public_key().public_numbers().e, 65537)

    def test_jwks_kids_are_exactly_the_unexpired_rows(self):
        server = self.server
        self.post_auth(server)
        jwks = self.get_jwks(server)
        now = time.time()
        unexpired = sorted(str(r[0]) for r in self.rows() if r[3] > now)
        self.assertEqual(sorted(jwks_kids(jwks)), unexpired)

    def test_normal_token_uses_the_unexpired_row(self):
        server = self.server
        _, token = self.post_auth(server)
        header, claims = self.assertTokenWellFormed(token)
        kid, _, pem, key_exp = self.row(header["kid"])
        self.assertGreater(key_exp, time.time(), "token signed with an expired row")
        self.assertLessEqual(claims["exp"], key_exp, "token outlives its key")
        self.assertVerifiesWithPem(token, pem)
        numbers = load_private(pem).public_key().public_numbers()
        jwk = next((k for k in self.get_jwks(server)["keys"] if k["kid"] == str(kid)), None)
        self.assertIsNotNone(jwk, f"kid {kid} not in the JWKS")
        self.assertEqual(int_from_b64url(jwk["n"]), numbers.n, "JWKS n differs from the row")
        self.assertEqual(int_from_b64url(jwk["e"]), numbers.e, "JWKS e differs from the row")

    def test_expired_token_verifies_with_the_expired_row(self):
        server = self.server
        self.post_auth(server)
        jwks = self.get_jwks(server)
        for query in ("expired=true", "expired=1"):
            with self.subTest(query):
                _, token = self.post_auth(server, query=query)
                header, claims = self.assertTokenWellFormed(token, query)
                now = time.time()
                self.assertLess(claims["exp"], now, f"{query}: exp not in the past")
                kid, _, pem, key_exp = self.row(header["kid"])
                self.assertLessEqual(key_exp, now, f"{query}: signing row is not expired")
                self.assertNotIn(header["kid"], jwks_kids(jwks))
                self.assertVerifiesWithPem(token, pem, verify_exp=False, what=query)
                with self.assertRaises(jwt.ExpiredSignatureError):
                    jwt.decode(token, public_pem(pem), algorithms=["RS256"])
                other = next(r for r in self.rows() if r[0] != kid)
                with self.assertRaises(jwt.InvalidSignatureError,
                                       msg="expired token verifies with the other key"):
                    jwt.decode(token, public_pem(other[2]), algorithms=["RS256"],
                               options={"verify_exp": False})


class KeyLifetimeTests(SqliteStoreTestCase):
    """Short-lived keys made by jwksd itself. Nothing is published ahead
    (--jwks-max-age 0 --margin 0) and tokens live 1 s, so --key-ttl 2 or 3
    is a valid schedule (a key signs for key ttl - token ttl)."""

    SHORT_KEYS = ("--token-ttl", "1", "--jwks-max-age", "0", "--margin", "0")

    def test_short_key_ttl_sets_row_exp_and_token_exp_stays_within_it(self):
        # The cap of a token at a row's exp when the token ttl is longer is
        # InteropTests.test_signs_with_the_key_that_expires_last: jwksd no
        # longer accepts a --token-ttl that its own keys cannot honour.
        asked = time.time()
        server = self.start_sqlite("--key-ttl", "3", *self.SHORT_KEYS)
        _, token = self.post_auth(server)
        header, claims = self.assertTokenWellFormed(token)
        _, _, pem, key_exp = self.row(header["kid"])
        self.assertLessEqual(key_exp, time.time() + 3 + 1, "--key-ttl 3 not applied")
        self.assertLessEqual(claims["exp"], key_exp,
                             f"token exp {claims['exp']} later than key exp {key_exp}")
        self.assertGreater(claims["exp"], asked)
        self.assertVerifiesWithPem(token, pem, verify_exp=False)

    def test_jwks_follows_the_expiry_boundary(self):
        server = self.start_sqlite("--key-ttl", "2", *self.SHORT_KEYS)
        _, token = self.post_auth(server)
        old_kid, _, _, old_exp = self.row(jwt.get_unverified_header(token)["kid"])
        time.sleep(max(0.0, old_exp + 1.2 - time.time()))
        asked = time.time()
        jwks = self.get_jwks(server)
        self.assertNotIn(str(old_kid), jwks_kids(jwks), "expired key still published")
        by_kid = {str(r[0]): r for r in self.rows()}
        # The server chose the published set at or after asked; with a new key
        # every second, a key may expire between that and this check.
        for kid in jwks_kids(jwks):
            self.assertIn(kid, by_kid, f"published kid {kid} is not in the store")
            self.assertGreater(by_kid[kid][3], asked, f"published kid {kid} is expired")
        self.assertIn(str(old_kid), by_kid, "an expired key was deleted from the store")


class RestartTests(SqliteStoreTestCase):

    def test_restart_keeps_every_row_unchanged(self):
        first = self.start_sqlite(label="first")
        _, token = self.post_auth(first)
        self.stop_server(first)
        before = self.rows()
        second = self.start_sqlite(label="second")
        self.verify_with_served_jwks(second, token)
        self.post_auth(second)
        self.assertEqual(self.rows(), before, "restart changed the stored keys")

    def test_start_with_only_expired_keys_adds_one(self):
        old_exp = int(time.time()) - 600
        (old_kid,) = self.precreate([(pkcs1_pem(0), old_exp)])
        server = self.start_sqlite()
        _, token = self.post_auth(server)
        rows = self.rows()
        self.assertEqual(rows[0], (old_kid, "blob", pkcs1_pem(0), old_exp),
                         "the existing expired key was changed or removed")
        self.assertEqual(len(rows), 2, f"expected one new key: {[r[0] for r in rows]}")
        new_kid, _, new_pem, new_exp = rows[1]
        self.assertGreater(new_kid, old_kid)
        self.assertGreater(new_exp, time.time())
        self.assertEqual(jwks_kids(self.get_jwks(server)), [str(new_kid)])
        self.assertEqual(jwt.get_unverified_header(token)["kid"], str(new_kid))
        self.assertVerifiesWithPem(token, new_pem)
        _, expired = self.post_auth(server, query="expired=true")
        self.assertEqual(jwt.get_unverified_header(expired)["kid"], str(old_kid))
        self.assertVerifiesWithPem(expired, pkcs1_pem(0), verify_exp=False)


class InteropTests(SqliteStoreTestCase):
    """A store created by the assignment's own Python code."""

    def check_precreated_store(self, as_text):
        # The key expires in 3 days: far enough that no new key is due, so
        # jwksd must use it as it is and add nothing.
        pem = pkcs1_pem(0)
        value = pem.decode("ascii") if as_text else pem
        exp = int(time.time()) + 3 * 86400
        (kid,) = self.precreate([(value, exp)])
        before = self.rows()
        self.assertEqual(before[0][1], "text" if as_text else "blob")

        server = self.start_sqlite()
        jwks = self.get_jwks(server)
        self.assertEqual(jwks_kids(jwks), [str(kid)], "the pre-created key is not published")
        numbers = load_private(pem).public_key().public_numbers()
        self.assertEqual(int_from_b64url(jwks["keys"][0]["n"]), numbers.n)
        _, token = self.post_auth(server)
        header, claims = self.assertTokenWellFormed(token)
        self.assertEqual(header["kid"], str(kid))
        self.assertLessEqual(claims["exp"], exp)
        self.verify_with_served_jwks(server, token)
        self.assertVerifiesWithPem(token, pem)

        # No expired key in this store: expired=true is a JSON error, not a crash.
        resp = self.request(server, "POST", f"{AUTH_PATH}?expired=true")
        self.assertNotEqual(resp.status, 200, resp.describe())
        self.assertJsonError(resp, resp.status, "expired=true with no expired key")
        self.assertGreaterEqual(resp.status, 400)
        self.get_jwks(server)  # still serving

        self.assertEqual(self.rows(), before, "the pre-created rows were changed")
        self.stop_server(server)
        self.assertEqual(self.rows(), before, "the pre-created rows were changed")

    def test_precreated_store_with_text_key(self):
        self.check_precreated_store(as_text=True)

    def test_precreated_store_with_blob_key(self):
        self.check_precreated_store(as_text=False)

    def test_assignment_store_with_key_expiring_in_an_hour(self):
        # What the assignment's tools make: one key valid for an hour. jwksd may
        # add a key of its own (its successor is due --jwks-max-age + --margin
        # + 60 s before it expires), but must keep and publish the existing
        # one untouched.
        pem = pkcs1_pem(0)
        exp = int(time.time()) + 3600
        (kid,) = self.precreate([(pem.decode("ascii"), exp)])
        before = self.rows()
        server = self.start_sqlite()
        _, token = self.post_auth(server)
        self.verify_with_served_jwks(server, token)
        jwks = self.get_jwks(server)
        self.assertIn(str(kid), jwks_kids(jwks), "the pre-created unexpired key is not published")
        jwk = next(k for k in jwks["keys"] if k["kid"] == str(kid))
        self.assertEqual(int_from_b64url(jwk["n"]),
                         load_private(pem).public_key().public_numbers().n)
        after = self.rows()
        self.assertEqual(after[:len(before)], before, "the pre-created row was changed")
        for new_kid, _, new_pem, new_exp in after[len(before):]:
            self.assertGreater(new_kid, kid)
            self.assertTrue(new_pem.startswith(PEM_HEADER))
            self.assertGreater(new_exp, exp, "an added key must outlive the old one")

    def test_signs_with_the_key_that_expires_last(self):
        # Rows without a lifecycle entry sign until their exp, with no margin:
        # both keys expire long after their successor is due (--jwks-max-age
        # + --margin + 60 s before the later one's exp), so no key is added,
        # and the token must be capped at its key's expiry because
        # --token-ttl is longer still (--key-ttl leaves room for such tokens).
        now = int(time.time())
        late, early = now + 50000, now + 45000
        kid_late, kid_early = self.precreate([(pkcs1_pem(0), late), (pkcs1_pem(1), early)])
        server = self.start_sqlite("--token-ttl", "100000", "--key-ttl", "200000")
        _, token = self.post_auth(server)
        header, claims = self.assertTokenWellFormed(token)
        self.assertEqual(header["kid"], str(kid_late),
                         "must sign with the unexpired key that expires last")
        self.assertLessEqual(claims["exp"], late, "token outlives its signing key")
        self.assertGreater(claims["exp"], late - 10, "token exp should be the key's expiry")
        self.assertVerifiesWithPem(token, pkcs1_pem(0))
        self.assertEqual(sorted(jwks_kids(self.get_jwks(server))),
                         sorted([str(kid_late), str(kid_early)]))
        self.assertIsNotNone(jwk_for_kid(self.get_jwks(server), str(kid_early)))


    def test_extreme_expiry_values_are_served_without_overflow(self):
        # Found by reading the service while fuzzing: an expired key with
        # exp near INT64_MIN made iat = exp - token_ttl overflow (undefined
        # behaviour; the ASan+UBSan run of this suite aborts on it).
        now = int(time.time())
        lowest = -(2 ** 63) + 1
        kid_live, kid_low = self.precreate([(pkcs1_pem(0), now + 50000),
                                            (pkcs1_pem(1), lowest)])
        server = self.start_sqlite()
        _, token = self.post_auth(server, "expired=true")
        header, claims = self.assertTokenWellFormed(token, "expired token")
        self.assertEqual(header["kid"], str(kid_low))
        self.assertEqual(claims["exp"], lowest)
        self.assertLessEqual(claims["iat"], claims["exp"] + 3600)
        self.assertVerifiesWithPem(token, pkcs1_pem(1), verify_exp=False)
        self.assertEqual(jwks_kids(self.get_jwks(server)), [str(kid_live)])


class FailureTests(SqliteStoreTestCase):

    def run_failing(self, db, expected_rc=1):
        port = free_port()
        result = run_jwksd(["--listen", f"{LOOPBACK}:{port}", "--backend", BACKEND,
                            "--db", str(db)], cwd=self.tmp, timeout=5.0, watch_port=port)
        if result.returncode is None:
            self.failure(f"jwksd did not exit within 5 s:\n{result.describe()}")
        self.assertEqual(result.returncode, expected_rc, result.describe())
        self.assertFalse(result.listened, "listened although the store is unusable")
        self.assertIn(str(db), result.stderr, f"stderr must name the store file:\n"
                                              f"{result.describe()}")
        return result

    def test_missing_directory_exits_1_and_creates_nothing(self):
        missing = self.tmp / "missing"
        self.run_failing(missing / STORE_NAME)
        self.assertFalse(missing.exists(), "the missing directory was created")

    def test_store_path_is_a_directory_exits_1(self):
        directory = self.tmp / "a-directory.db"
        directory.mkdir()
        self.run_failing(directory)
        self.assertEqual(list(directory.iterdir()), [], "wrote into the directory")

    def test_random_bytes_file_exits_1_unchanged(self):
        content = os.urandom(4096)
        self.db.write_bytes(content)
        self.run_failing(self.db)
        self.assertEqual(self.db.read_bytes(), content, "the file was modified")

    def test_a_users_table_of_another_shape_exits_1_unchanged(self):
        """A users table that is not the assignment's is another program's:
        the store is refused before anything is written to it."""
        self.precreate([(pkcs1_pem(0), int(time.time()) + 86400)])
        con = sqlite3.connect(self.db)
        con.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
        con.commit()
        con.close()
        content = self.db.read_bytes()
        result = self.run_failing(self.db)
        self.assertIn("users", result.stderr, result.describe())
        self.assertEqual(self.db.read_bytes(), content, "the file was modified")

    def test_bad_flag_exits_2_with_usage(self):
        result = run_jwksd(["--backend", BACKEND, "--db", str(self.db), "--bogus-flag"],
                           cwd=self.tmp, timeout=5.0)
        self.assertEqual(result.returncode, 2, result.describe())
        self.assertRegex(result.stderr, r"(?i)usage", result.describe())
        self.assertFalse(self.db.exists(), "a bad flag still created the store")


if __name__ == "__main__":
    unittest.main()
