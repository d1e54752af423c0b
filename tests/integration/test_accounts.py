"""User accounts against the real binary, backend-generic (env KS_TEST_BACKEND).

Issue 12: POST /register; POST /auth with JSON and HTTP Basic credentials
(tokens verified with PyJWT against the served JWKS: sub is the user's id
as a string, preferred_username the name); wrong passwords, unknown and
locked users under --login open and required; duplicate usernames; the
`jwksd users` commands against a running server; the auth log; no password
in any log line, table or answer but the one that hands it out; the time
an unknown username costs against a wrong password (a measurement, reported,
failing only outside 0.5-2); the sliding-window rate limits, client
addresses behind --trust-proxy, and a flood of 100,000 addresses.

Store contents are read outside jwksd: SQLite with python's sqlite3 (the
assignment's `users` and `auth_logs` tables, exactly), PostgreSQL with
psql, LMDB through `jwksd copy --with-auth-log` of a scratch copy of its
data file into SQLite.

Every server here starts with both rate limits off (harness) unless a test
sets them; the rate-limit tests set them explicitly.
"""

import base64
import http.client
import json
import re
import shutil
import socket
import sqlite3
import statistics
import sys
import threading
import time
import unittest
from datetime import datetime, timezone
from pathlib import Path

from harness import (
    AUTH_PATH, BACKEND, CLOCK_SLACK, LOOPBACK,
    JwksdTestCase, PgStore, db_args, free_port, run_jwksd, split_jwt,
)

REGISTER_PATH = "/register"

# A generated password: a random UUID, version 4, variant 1, lower case.
UUID4_RE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
ANY_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# An Argon2id PHC string as libargon2 writes it.
PHC_RE = re.compile(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)"
                    r"\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}")
DEFAULT_ARGON2 = ("19456", "2", "1")

INVALID_CREDENTIALS = {"error": "invalid credentials"}
CREDENTIALS_REQUIRED = {"error": "credentials required"}
TOO_MANY = {"error": "too many requests"}
TAKEN = {"error": "username or email taken"}
CHALLENGE = 'Basic realm="jwksd"'

# The assignment's tables, exactly (issue 12).
USERS_DDL = ("CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, "
             "username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL, "
             "email TEXT UNIQUE, date_registered TIMESTAMP DEFAULT "
             "CURRENT_TIMESTAMP, last_login TIMESTAMP)")
AUTH_LOGS_DDL = ("CREATE TABLE auth_logs(id INTEGER PRIMARY KEY AUTOINCREMENT, "
                 "request_ip TEXT NOT NULL, request_timestamp TIMESTAMP DEFAULT "
                 "CURRENT_TIMESTAMP, user_id INTEGER, "
                 "FOREIGN KEY(user_id) REFERENCES users(id))")
# PostgreSQL keeps times as bigint seconds: shown as CURRENT_TIMESTAMP would.
PG_TIME = "to_char(to_timestamp({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
# CURRENT_TIMESTAMP's text: UTC, to the second.
SQL_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")

# How long an auth-log row may take to be readable after the answer (the
# server commits it before answering when the store is quick: the slack is
# for a loaded machine).
LOG_VISIBLE = 3.0

# The `jwksd users` commands hash a password (Argon2id, m=19456 KiB).
CLI_TIMEOUT = 60.0


def basic(username, password):
    """An Authorization header value for HTTP Basic (RFC 7617)."""
    raw = username.encode() + b":" + (password.encode()
                                       if isinstance(password, str) else password)
    return "Basic " + base64.b64encode(raw).decode("ascii")


def normalize_ddl(sql):
    """CREATE TABLE text with IF NOT EXISTS dropped and whitespace normalized."""
    sql = re.sub(r"(?i)\bIF\s+NOT\s+EXISTS\s+", "", sql)
    sql = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"\s*([(),])\s*", r"\1", sql).replace(",", ", ")


def sql_time(text):
    """A CURRENT_TIMESTAMP text as an aware UTC datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)


def secret_forms(password):
    """Byte strings that would betray a generated password in storage:
    its text, its hex digits without dashes, its 16 raw bytes."""
    hexdigits = password.replace("-", "")
    return [password.encode(), password.upper().encode(), hexdigits.encode(),
            bytes.fromhex(hexdigits)]


# --------------------------------------------------------------- store view

class StoreView:
    """What a store holds, read outside the server.

    users() -> [{id, username, password_hash, email, date_registered,
    last_login}], auth_logs() -> [{id, request_ip, request_timestamp,
    user_id, success}], times as text the way SQLite's CURRENT_TIMESTAMP
    writes them, raw() -> bytes to search for secrets.
    """

    def __init__(self, case, db):
        self.case = case
        self.db = db

    # -- SQLite (also the target of the LMDB copy)

    @staticmethod
    def _sqlite_rows(path, sql):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(sql)]
        finally:
            con.close()

    def _sqlite_path(self):
        if BACKEND == "sqlite":
            return self.db
        if BACKEND == "lmdb":
            return self._lmdb_copy()
        return None

    def _lmdb_copy(self):
        """The LMDB store copied (users and auth log) into a scratch SQLite
        file through `jwksd copy --with-auth-log` of a scratch copy of the
        data file: the store under test is never opened by the reader."""
        scratch = Path(self.case.make_tmpdir())
        shutil.copyfile(self.db, scratch / "src.lmdb")
        res = run_jwksd(["copy", "--from", f"lmdb:{scratch / 'src.lmdb'}",
                         "--to", f"sqlite:{scratch / 'copy.db'}", "--with-auth-log"],
                        cwd=scratch, timeout=30)
        if res.returncode != 0:
            raise AssertionError("reading the LMDB store through `jwksd copy "
                                 f"--with-auth-log` failed:\n{res.describe()}")
        return scratch / "copy.db"

    def schema_sql(self, table):
        if BACKEND != "sqlite":
            raise unittest.SkipTest("the assignment's exact DDL is SQLite's")
        rows = self._sqlite_rows(self.db, "SELECT name, sql FROM sqlite_master "
                                          "WHERE type = 'table'")
        return {r["name"]: r["sql"] for r in rows}.get(table)

    def users(self):
        if BACKEND == "postgres":
            # Times are bigint seconds there: shown as SQLite shows them.
            return self._pg_dicts(
                "SELECT id, username, password_hash, COALESCE(email, '<null>'), "
                f"{PG_TIME.format('date_registered')}, "
                f"COALESCE({PG_TIME.format('last_login')}, '<null>') "
                "FROM users ORDER BY id",
                ["id", "username", "password_hash", "email", "date_registered",
                 "last_login"])
        return self._sqlite_rows(self._sqlite_path(),
                                 "SELECT id, username, password_hash, email, "
                                 "date_registered, last_login FROM users ORDER BY id")

    def auth_logs(self):
        if BACKEND == "postgres":
            return self._pg_dicts(
                "SELECT id, request_ip, "
                f"{PG_TIME.format('request_timestamp')}, "
                "COALESCE(user_id::text, '<null>'), success FROM auth_logs ORDER BY id",
                ["id", "request_ip", "request_timestamp", "user_id", "success"])
        # The outcome lives in a table of its own (backends/sqlite.c:
        # auth_log_results; an attempt without a row counts as failed).
        rows = self._sqlite_rows(self._sqlite_path(),
                                 "SELECT a.id, a.request_ip, a.request_timestamp, "
                                 "a.user_id, COALESCE(r.success, 0) AS success "
                                 "FROM auth_logs a LEFT JOIN auth_log_results r "
                                 "ON r.log_id = a.id ORDER BY a.id")
        for r in rows:
            r["success"] = bool(r["success"])
        return rows

    def _pg_dicts(self, sql, names):
        out = []
        for row in self.db.rows(sql):
            d = {}
            for name, value in zip(names, row):
                if value == "<null>":
                    value = None
                elif name in ("id", "user_id"):
                    value = int(value)
                elif name == "success":
                    value = {"t": True, "f": False}[value]
                d[name] = value
            out.append(d)
        return out

    def raw(self):
        """Every byte the store keeps: the files of a file store (data,
        WAL, journal, lock), or for PostgreSQL every row of every table of
        the schema as text."""
        if isinstance(self.db, PgStore):
            names = self.db.psql(
                "SELECT table_name FROM information_schema.tables "
                f"WHERE table_schema = '{self.db.schema}'").split()
            return "\n".join(self.db.psql(f'SELECT t::text FROM "{n}" t')
                             for n in names).encode()
        path = Path(self.db)
        data = b""
        for p in sorted(path.parent.iterdir()):
            if p.name.startswith(path.name):
                data += p.read_bytes()
        return data


# --------------------------------------------------------------- base class

class AccountsCase(JwksdTestCase):
    """Helpers for talking to the account routes and reading the store."""

    # -- HTTP

    def post_json(self, server, path, obj, headers=None):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        return self.request(server, "POST", path, body=body, headers=hdrs)

    def register(self, server, username, email=None, headers=None):
        """POST /register; asserts 201 {"password": <UUIDv4>}, returns it."""
        obj = {"username": username}
        if email is not None:
            obj["email"] = email
        resp = self.post_json(server, REGISTER_PATH, obj, headers)
        self.assertEqual(resp.status, 201, f"register {username!r}: {resp.describe()}")
        self.assertJsonContentType(resp, "POST /register")
        data = resp.json()
        self.assertEqual(set(data), {"password"}, f"register answer {data}")
        self.assertRegex(data["password"], UUID4_RE, "a generated UUIDv4 password")
        self.assertIn("no-store", resp.header("Cache-Control") or "",
                      f"an answer with a password must not be cached: {resp.describe()}")
        return data["password"]

    def login(self, server, username, password, how="json", headers=None):
        """POST /auth with credentials in a JSON body or HTTP Basic."""
        hdrs = dict(headers or {})
        if how == "basic":
            hdrs["Authorization"] = basic(username, password)
            return self.request(server, "POST", AUTH_PATH, body=b"", headers=hdrs)
        return self.post_json(server, AUTH_PATH,
                              {"username": username, "password": password}, hdrs)

    def token_of(self, server, resp, what):
        self.assertEqual(resp.status, 200, f"{what}: {resp.describe()}")
        self.assertJsonContentType(resp, what)
        token = resp.json().get("token")
        self.assertIsInstance(token, str, f"{what}: {resp.describe()}")
        self.assertTokenWellFormed(token, what)
        return self.verify_with_served_jwks(server, token)

    def assertLoggedIn(self, server, resp, user_id, username, what="login"):
        """A 200 token verified with the served JWKS, naming the user."""
        claims = self.token_of(server, resp, what)
        self.assertIsInstance(claims.get("sub"), str, f"{what}: sub must be a string: "
                                                      f"{claims}")
        self.assertEqual(claims["sub"], str(user_id), f"{what}: {claims}")
        self.assertEqual(claims.get("preferred_username"), username, f"{what}: {claims}")
        return claims

    def assertAnonymous(self, server, resp, what):
        """A 200 token without sub or preferred_username."""
        claims = self.token_of(server, resp, what)
        self.assertNotIn("sub", claims, f"{what}: an anonymous token names a user")
        self.assertNotIn("preferred_username", claims, f"{what}: {claims}")
        return claims

    def assertUnauthorized(self, resp, body, what):
        """401 with exactly this JSON body and the Basic challenge."""
        self.assertEqual(resp.status, 401, f"{what}: {resp.describe()}")
        self.assertJsonContentType(resp, what)
        self.assertEqual(resp.json(), body, f"{what}: {resp.describe()}")
        self.assertEqual(resp.header_values("WWW-Authenticate"), [CHALLENGE],
                         f"{what}: {resp.describe()}")

    def assertTooMany(self, resp, what, max_retry):
        """429 {"error":"too many requests"} with an integer Retry-After."""
        self.assertEqual(resp.status, 429, f"{what}: {resp.describe()}")
        self.assertJsonContentType(resp, what)
        self.assertEqual(resp.json(), TOO_MANY, f"{what}: {resp.describe()}")
        retry = resp.header("Retry-After")
        self.assertIsNotNone(retry, f"{what}: no Retry-After: {resp.describe()}")
        self.assertRegex(retry, r"\A[0-9]+\Z", f"{what}: Retry-After {retry!r}")
        self.assertTrue(1 <= int(retry) <= max_retry,
                        f"{what}: Retry-After {retry}, want 1..{max_retry}")

    # -- jwksd users

    def users_cmd(self, db, *args, expect=0):
        res = run_jwksd(["users", *args, "--backend", BACKEND, *db_args(db)],
                        cwd=self.tmp, timeout=CLI_TIMEOUT)
        if expect is not None:
            self.assertEqual(res.returncode, expect, res.describe())
        return res

    def shown_password(self, res):
        """The password `jwksd users add|passwd` printed."""
        m = re.search(r"\(shown once\): (\S+)\n", res.stdout)
        self.assertIsNotNone(m, f"no password shown: {res.describe()}")
        self.assertRegex(m.group(1), UUID4_RE, res.describe())
        return m.group(1)

    def users_json(self, db):
        res = self.users_cmd(db, "list", "--json")
        try:
            data = json.loads(res.stdout)
        except ValueError as exc:
            self.failure(f"users list --json is not JSON ({exc}): {res.describe()}")
        self.assertIsInstance(data, list, res.describe())
        return data

    def user_id(self, db, username):
        for u in self.users_json(db):
            if u.get("username") == username:
                self.assertIsInstance(u.get("id"), int, f"users list: {u}")
                return u["id"]
        self.failure(f"no user {username!r} in `jwksd users list --json`")

    # -- the store

    def view(self, server_or_db):
        return StoreView(self, getattr(server_or_db, "db", server_or_db))

    def wait_auth_logs(self, view, want, what):
        """The auth-log rows once want(rows) holds (within LOG_VISIBLE)."""
        deadline = time.monotonic() + LOG_VISIBLE
        while True:
            rows = view.auth_logs()
            if want(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def assertNoSecret(self, data, passwords, where):
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        for pw in passwords:
            for form in secret_forms(pw):
                self.assertNotIn(form, data, f"a password ({pw}) appears in {where}")


# ------------------------------------------------------------ registration

class RegisterAndLoginTests(AccountsCase):

    def test_register_then_login_with_json_and_basic(self):
        server = self.start_server()
        pw_alice = self.register(server, "alice", "alice@example.com")
        pw_bob = self.register(server, "bob")
        self.assertNotEqual(pw_alice, pw_bob)
        ids = {u["username"]: u for u in self.users_json(server.db)}
        self.assertEqual(set(ids), {"alice", "bob"})
        self.assertEqual(ids["alice"].get("email"), "alice@example.com")
        alice, bob = ids["alice"]["id"], ids["bob"]["id"]
        self.assertNotEqual(alice, bob)

        for how in ("json", "basic"):
            with self.subTest(how=how):
                resp = self.login(server, "alice", pw_alice, how)
                self.assertLoggedIn(server, resp, alice, "alice", f"alice, {how}")
                resp = self.login(server, "bob", pw_bob, how)
                self.assertLoggedIn(server, resp, bob, "bob", f"bob, {how}")
        # A stable id: the same sub on every login.
        again = self.assertLoggedIn(server, self.login(server, "alice", pw_alice),
                                    alice, "alice", "alice again")
        self.assertEqual(again["sub"], str(alice))
        # Basic wins over a JSON body naming someone else.
        resp = self.request(server, "POST", AUTH_PATH,
                            body=json.dumps({"username": "bob", "password": pw_bob}),
                            headers={"Authorization": basic("alice", pw_alice),
                                     "Content-Type": "application/json"})
        self.assertLoggedIn(server, resp, alice, "alice", "Basic and a JSON body")
        # A JSON string escape is the same username.
        resp = self.post_json(server, AUTH_PATH,
                              b'{"username": "\\u0061lice", "password": "%s"}'
                              % pw_alice.encode())
        self.assertLoggedIn(server, resp, alice, "alice", "escaped username")
        # last_login is recorded by a successful login.
        users = {u["username"]: u for u in self.users_json(server.db)}
        self.assertGreater(users["alice"].get("last_login") or 0,
                           time.time() - 120, f"alice's last_login: {users['alice']}")

    def test_utf8_username_and_length_limits(self):
        server = self.start_server()
        cases = ["Zoë Ångström 名前", "é" * 32, "u" * 64, "a", "with space",
                 "emoji \U0001F511"]
        for name in cases:
            with self.subTest(name=name):
                pw = self.register(server, name)
                uid = self.user_id(server.db, name)
                self.assertLoggedIn(server, self.login(server, name, pw), uid, name,
                                    f"login as {name!r}")
                self.assertLoggedIn(server, self.login(server, name, pw, "basic"),
                                    uid, name, f"Basic login as {name!r}")

    def test_register_refuses_bad_bodies_with_400(self):
        server = self.start_server()
        long_email = "e" * (254 - len("@example.com")) + "@example.com"
        self.assertEqual(len(long_email), 254)
        bodies = {
            "empty": b"",
            "not JSON": b"username=mallory",
            "array": b'["mallory"]',
            "string": b'"mallory"',
            "null": b"null",
            "empty object": b"{}",
            "number username": {"username": 5},
            "null username": {"username": None},
            "array username": {"username": ["mallory"]},
            "object username": {"username": {"name": "mallory"}},
            "bool username": {"username": True},
            "empty username": {"username": ""},
            "65-byte username": {"username": "u" * 65},
            "33 two-byte chars (66 bytes)": {"username": "é" * 33},
            "tab in username": {"username": "mal\tlory"},
            "newline in username": {"username": "mal\nlory"},
            "DEL in username": {"username": "mal\x7flory"},
            "C1 control in username": {"username": "mal\u0085lory"},
            "NUL in username": {"username": "mal\u0000lory"},
            "number email": {"username": "mallory", "email": 5},
            "empty email": {"username": "mallory", "email": ""},
            "email without @": {"username": "mallory", "email": "mallory.example.com"},
            "email with two @": {"username": "mallory", "email": "a@b@example.com"},
            "email with space": {"username": "mallory", "email": "mal lory@example.com"},
            "255-byte email": {"username": "mallory", "email": "e" + long_email},
            "password member": {"username": "mallory", "password": "chosen"},
            "unknown member": {"username": "mallory", "admin": True},
            "duplicate username": b'{"username": "mallory", "username": "eve"}',
            "duplicate email": b'{"username": "mallory", "email": "a@example.com", '
                               b'"email": "b@example.com"}',
            "truncated": b'{"username": "mallory"',
            "trailing garbage": b'{"username": "mallory"} x',
        }
        for name, body in bodies.items():
            with self.subTest(name):
                resp = self.post_json(server, REGISTER_PATH, body)
                self.assertJsonError(resp, 400, f"register with {name}")
                self.assertNotIn(b"password", resp.body, resp.describe())
        self.assertEqual(self.users_json(server.db), [],
                         "a refused registration created a user")
        # The limits themselves are accepted.
        self.register(server, "mallory", long_email)
        self.register(server, "eve", None)
        resp = self.post_json(server, REGISTER_PATH, {"username": "trent", "email": None})
        self.assertEqual(resp.status, 201, f"email null is no email: {resp.describe()}")

    def test_other_methods_on_register_are_405(self):
        server = self.start_server()
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                resp = self.request(server, method, REGISTER_PATH,
                                    body=b'{"username": "x"}' if method != "GET" else None)
                self.assertJsonError(resp, 405, f"{method} /register")
                self.assertIn("POST", resp.header("Allow") or "", resp.describe())
        self.assertEqual(self.users_json(server.db), [])

    def test_duplicate_username_or_email_is_409(self):
        server = self.start_server()
        pw = self.register(server, "dave", "dave@example.com")
        uid = self.user_id(server.db, "dave")
        for name, body in (("same username", {"username": "dave"}),
                           ("same username, other email",
                            {"username": "dave", "email": "other@example.com"}),
                           ("same email", {"username": "dave2",
                                           "email": "dave@example.com"})):
            with self.subTest(name):
                resp = self.post_json(server, REGISTER_PATH, body)
                self.assertEqual(resp.status, 409, f"{name}: {resp.describe()}")
                self.assertJsonContentType(resp, name)
                self.assertEqual(resp.json(), TAKEN, resp.describe())
                self.assertIsNone(ANY_UUID_RE.search(resp.body.decode()),
                                  f"{name}: a 409 carries a password: {resp.describe()}")
        users = self.users_json(server.db)
        self.assertEqual([u["username"] for u in users], ["dave"], users)
        # The first password is still the one that works.
        self.assertLoggedIn(server, self.login(server, "dave", pw), uid, "dave")

    def test_rehash_with_new_parameters(self):
        """A hash made with other Argon2 parameters keeps verifying and is
        rehashed with the current ones on the next successful login."""
        db = self.store_path()
        first = self.start_server(db=db, label="default-argon2")
        pw = self.register(first, "frank")
        uid = self.user_id(db, "frank")
        self.stop_server(first)
        stronger = self.start_server("--argon2", "m=19456,t=3,p=1", db=db,
                                     label="t3-argon2")
        self.assertLoggedIn(stronger, self.login(stronger, "frank", pw), uid, "frank",
                            "login after --argon2 changed")
        if BACKEND != "lmdb":
            view = self.view(db)
            deadline = time.monotonic() + LOG_VISIBLE
            while True:
                hashes = [u["password_hash"] for u in view.users()]
                m = PHC_RE.fullmatch(hashes[0])
                if (m and m.group(2) == "3") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertIsNotNone(m, f"stored hash {hashes[0]!r} is not Argon2id PHC")
            self.assertEqual(m.groups(), ("19456", "3", "1"),
                             "the hash was not rehashed with t=3 after a login")
        self.assertLoggedIn(stronger, self.login(stronger, "frank", pw, "basic"),
                            uid, "frank", "second login with t=3")
        self.assertUnauthorized(self.login(stronger, "frank", pw.upper()),
                                INVALID_CREDENTIALS, "wrong password after the rehash")


class AccountFlagTests(AccountsCase):

    @unittest.skipIf(BACKEND != "sqlite", "flags are parsed alike for every backend: "
                                          "checked once, on sqlite")
    def test_bad_account_flags_stop_the_server(self):
        cases = [("--login", "bogus"), ("--login", ""),
                 ("--argon2", "m=1024,t=1,p=1"),  # below OWASP's minimum
                 ("--argon2", "m=19456,t=1,p=1"), ("--argon2", "m=19456,t=2"),
                 ("--argon2", "t=2,p=1,m=19456,m=20000"),
                 ("--trust-proxy", "garbage"), ("--trust-proxy", "10.0.0.0/33"),
                 ("--auth-rate", "-1"), ("--auth-rate", "x"),
                 ("--register-rate", "-5"), ("--auth-log-days", "-1")]
        for flag, value in cases:
            with self.subTest(flag=flag, value=value):
                port = free_port()
                work = self.make_tmpdir()
                res = run_jwksd(["--listen", f"127.0.0.1:{port}", "--backend", BACKEND,
                                 *db_args(self.store_path(work)), flag, value],
                                cwd=work, timeout=20, watch_port=port)
                self.assertNotIn(res.returncode, (0, None), res.describe())
                self.assertFalse(res.listened, f"listened with {flag} {value!r}")
                self.assertIn(flag.lstrip("-").split("-")[0], res.stderr.lower(),
                              f"the message names the flag: {res.describe()}")


# ----------------------------------------------------------- login outcomes

class LoginOutcomeTests(AccountsCase):

    def test_wrong_password_unknown_user_and_no_credentials_open(self):
        server = self.start_server()  # --login open is the default
        pw = self.register(server, "grace")
        for how in ("json", "basic"):
            for name, user, password in (
                    ("wrong password", "grace", pw[:-1] + ("0" if pw[-1] != "0" else "1")),
                    ("empty password", "grace", ""),
                    ("password of upper case", "grace", pw.upper()),
                    ("password with a suffix", "grace", pw + "0"),
                    ("password cut short", "grace", pw[:-1])):
                with self.subTest(how=how, case=name):
                    self.assertUnauthorized(self.login(server, user, password, how),
                                            INVALID_CREDENTIALS, f"{name} ({how})")
            with self.subTest(how=how, case="unknown user"):
                resp = self.login(server, "nobody-by-that-name", pw, how)
                self.assertAnonymous(server, resp, f"unknown user, --login open ({how})")
        for name, body, headers in (
                ("no body", b"", {}),
                ("empty JSON object", b"{}", {"Content-Type": "application/json"}),
                ("username only", b'{"username": "grace"}',
                 {"Content-Type": "application/json"}),
                ("Bearer", b"", {"Authorization": "Bearer abc"})):
            with self.subTest(case=name):
                resp = self.request(server, "POST", AUTH_PATH, body=body, headers=headers)
                self.assertAnonymous(server, resp, f"{name}, --login open")

    def test_login_required(self):
        server = self.start_server("--login", "required")
        pw = self.register(server, "heidi")
        uid = self.user_id(server.db, "heidi")
        self.assertLoggedIn(server, self.login(server, "heidi", pw), uid, "heidi")
        self.assertLoggedIn(server, self.login(server, "heidi", pw, "basic"), uid, "heidi")
        wrong = self.login(server, "heidi", pw[::-1])
        unknown = self.login(server, "nobody-by-that-name", pw)
        self.assertUnauthorized(wrong, INVALID_CREDENTIALS, "wrong password, required")
        self.assertUnauthorized(unknown, INVALID_CREDENTIALS, "unknown user, required")
        self.assertEqual(wrong.body, unknown.body,
                         "the answers to an unknown user and a wrong password differ")
        self.assertUnauthorized(self.login(server, "nobody-by-that-name", pw, "basic"),
                                INVALID_CREDENTIALS, "unknown user, Basic, required")
        for name, body, headers in (
                ("no body", b"", {}),
                ("empty JSON object", b"{}", {"Content-Type": "application/json"}),
                ("username only", b'{"username": "heidi"}',
                 {"Content-Type": "application/json"}),
                ("Bearer", b"", {"Authorization": "Bearer abc"}),
                ("Basic without a colon", b"",
                 {"Authorization": "Basic " + base64.b64encode(b"heidi").decode()}),
                ("Basic of bad base64", b"", {"Authorization": "Basic !!!"})):
            with self.subTest(case=name):
                resp = self.request(server, "POST", AUTH_PATH, body=body, headers=headers)
                self.assertUnauthorized(resp, CREDENTIALS_REQUIRED, f"{name}, required")
        # The assignment's credentials name no user here.
        resp = self.request(server, "POST", AUTH_PATH, body=b"",
                            headers={"Authorization": basic("userABC", "password123")})
        self.assertUnauthorized(resp, INVALID_CREDENTIALS, "userABC, required")

    def test_locked_user_via_users_lock_against_the_running_server(self):
        for mode in ("open", "required"):
            with self.subTest(login=mode):
                work = self.make_tmpdir()
                server = self.start_server("--login", mode, label=f"login-{mode}",
                                           workdir=work)
                pw = self.register(server, "ivan")
                uid = self.user_id(server.db, "ivan")
                self.assertLoggedIn(server, self.login(server, "ivan", pw), uid, "ivan")
                res = self.users_cmd(server.db, "lock", "ivan")
                self.assertIn("ivan", res.stdout, res.describe())
                for how in ("json", "basic"):
                    self.assertUnauthorized(self.login(server, "ivan", pw, how),
                                            INVALID_CREDENTIALS,
                                            f"locked user, {how}, --login {mode}")
                users = {u["username"]: u for u in self.users_json(server.db)}
                self.assertIs(users["ivan"].get("locked"), True, users)
                self.users_cmd(server.db, "unlock", "ivan")
                self.assertLoggedIn(server, self.login(server, "ivan", pw), uid, "ivan",
                                    "after unlock")
                self.stop_server(server)


# ---------------------------------------------------------- jwksd users

class UsersCommandTests(AccountsCase):

    ADDED_RE = re.compile(r"user (\d+) 'judy' added; password \(shown once\): (\S+)")
    PASSWD_RE = re.compile(r"new password \(shown once\): (\S+)")

    def test_users_commands_against_a_running_server(self):
        server = self.start_server("--login", "required")
        db = server.db
        shown = []

        res = self.users_cmd(db, "add", "judy", "--email", "judy@example.com")
        m = self.ADDED_RE.search(res.stdout)
        self.assertIsNotNone(m, f"users add output: {res.describe()}")
        uid, pw = int(m.group(1)), m.group(2)
        self.assertRegex(pw, UUID4_RE)
        shown.append(pw)
        self.assertEqual(res.stdout.count(pw), 1, "the password is shown once")
        self.assertLoggedIn(server, self.login(server, "judy", pw), uid, "judy",
                            "password from users add")
        self.assertEqual(self.user_id(db, "judy"), uid)

        # add again: refused, no password shown.
        res = self.users_cmd(db, "add", "judy", expect=None)
        self.assertNotEqual(res.returncode, 0, res.describe())
        self.assertIsNone(ANY_UUID_RE.search(res.stdout + res.stderr), res.describe())

        # list: the user and email, never a hash or a password.
        pw_http = self.register(server, "kim")
        shown.append(pw_http)
        for args in (("list",), ("list", "--json")):
            res = self.users_cmd(db, *args)
            self.assertIn("judy", res.stdout, res.describe())
            self.assertIn("judy@example.com", res.stdout, res.describe())
            self.assertIn("kim", res.stdout, res.describe())
            self.assertNotIn("$argon2", res.stdout + res.stderr, res.describe())
            self.assertNoSecret(res.stdout + res.stderr, shown, f"users {' '.join(args)}")
        for u in self.users_json(db):
            self.assertLessEqual(set(u), {"id", "username", "email", "registered",
                                          "last_login", "locked"}, u)

        # passwd: a new password; the old one fails, the new one works.
        res = self.users_cmd(db, "passwd", "judy")
        m = self.PASSWD_RE.search(res.stdout)
        self.assertIsNotNone(m, res.describe())
        new_pw = m.group(1)
        self.assertRegex(new_pw, UUID4_RE)
        self.assertNotEqual(new_pw, pw)
        shown.append(new_pw)
        self.assertUnauthorized(self.login(server, "judy", pw), INVALID_CREDENTIALS,
                                "the old password after passwd")
        self.assertLoggedIn(server, self.login(server, "judy", new_pw, "basic"), uid,
                            "judy", "the new password after passwd")
        self.assertLoggedIn(server, self.login(server, "kim", pw_http),
                            self.user_id(db, "kim"), "kim", "another user is unchanged")

        # delete: the login fails, the list no longer shows the user.
        self.users_cmd(db, "delete", "judy")
        self.assertUnauthorized(self.login(server, "judy", new_pw), INVALID_CREDENTIALS,
                                "login after delete")
        self.assertEqual([u["username"] for u in self.users_json(db)], ["kim"])
        # The name is free again; ids are never reused.
        self.register(server, "judy")
        self.assertGreater(self.user_id(db, "judy"), uid, "a deleted id was reused")

        # Commands on a user that does not exist fail with a message.
        for cmd in ("passwd", "lock", "unlock", "delete"):
            with self.subTest(cmd=cmd):
                res = self.users_cmd(db, cmd, "nobody-by-that-name", expect=None)
                self.assertNotEqual(res.returncode, 0, res.describe())
                self.assertIn("nobody-by-that-name", res.stderr, res.describe())
                self.assertIsNone(ANY_UUID_RE.search(res.stdout), res.describe())
        # Usage errors.
        for args in (("add",), ("add", "a", "b"), ("add", "x" * 65), ("frobnicate",),
                     ("add", "ok", "--email", "not-an-email")):
            with self.subTest(args=args):
                res = self.users_cmd(db, *args, expect=None)
                self.assertEqual(res.returncode, 2, res.describe())
        self.stop_server(server)
        self.assertNoSecret(server.stderr_text(), shown, "the server's log")

    def test_delete_keeps_the_auth_log_rows(self):
        server = self.start_server()
        pw = self.register(server, "leo")
        uid = self.user_id(server.db, "leo")
        self.assertLoggedIn(server, self.login(server, "leo", pw), uid, "leo")
        self.assertUnauthorized(self.login(server, "leo", "wrong"), INVALID_CREDENTIALS,
                                "wrong password")
        view = self.view(server)
        rows = self.wait_auth_logs(view, lambda r: len(r) >= 2, "two attempts")
        self.assertEqual([r["user_id"] for r in rows], [uid, uid], rows)
        self.users_cmd(server.db, "delete", "leo")
        rows = view.auth_logs()
        self.assertEqual(len(rows), 2, f"deleting a user removed auth-log rows: {rows}")
        self.assertEqual([r["user_id"] for r in rows], [None, None],
                         f"rows of a deleted user keep its id: {rows}")


# -------------------------------------------------------------- auth log

class AuthLogTests(AccountsCase):

    def test_tables_are_exactly_the_assignment_tables(self):
        if BACKEND != "sqlite":
            self.skipTest("the assignment's exact DDL is SQLite's")
        server = self.start_server()
        self.register(server, "mallory")
        view = self.view(server)
        for table, want in (("users", USERS_DDL), ("auth_logs", AUTH_LOGS_DDL)):
            with self.subTest(table=table):
                sql = view.schema_sql(table)
                self.assertIsNotNone(sql, f"no table {table}")
                self.assertEqual(normalize_ddl(sql), normalize_ddl(want),
                                 f"{table} DDL as stored:\n{sql}")

    def test_every_checked_attempt_is_logged(self):
        server = self.start_server("--trust-proxy", "127.0.0.1/32")
        pw = self.register(server, "nina")
        pw_olga = self.register(server, "olga")
        nina = self.user_id(server.db, "nina")
        olga = self.user_id(server.db, "olga")
        self.users_cmd(server.db, "lock", "olga")
        started = datetime.now(timezone.utc)

        def xff(addr):
            return {"X-Forwarded-For": addr}

        view = self.view(server)
        # (what, request, check of the answer, the row it leaves: (client
        # address, user id or None for an unknown user, success), or None)
        steps = [
            ("valid, JSON", lambda: self.login(server, "nina", pw, "json",
                                               xff("198.51.100.1")),
             lambda r: self.assertLoggedIn(server, r, nina, "nina"),
             ("198.51.100.1", nina, True)),
            ("wrong password, Basic", lambda: self.login(server, "nina", pw[::-1], "basic",
                                                         xff("198.51.100.2")),
             lambda r: self.assertUnauthorized(r, INVALID_CREDENTIALS, "wrong password"),
             ("198.51.100.2", nina, False)),
            ("unknown user", lambda: self.login(server, "nobody-by-that-name", pw, "json",
                                                xff("198.51.100.3")),
             lambda r: self.assertAnonymous(server, r, "unknown user"),
             ("198.51.100.3", None, False)),
            ("locked user", lambda: self.login(server, "olga", pw_olga, "json",
                                               xff("198.51.100.4")),
             lambda r: self.assertUnauthorized(r, INVALID_CREDENTIALS, "locked user"),
             ("198.51.100.4", olga, False)),
            # Not checked: no credentials at all (an anonymous token).
            ("no credentials", lambda: self.request(server, "POST", AUTH_PATH, body=b"",
                                                    headers=xff("198.51.100.5")),
             lambda r: self.assertAnonymous(server, r, "no credentials"), None),
            ("valid, IPv6 client", lambda: self.login(server, "nina", pw, "basic",
                                                      xff("2001:db8::7")),
             lambda r: self.assertLoggedIn(server, r, nina, "nina"),
             ("2001:db8::7", nina, True)),
            # The rightmost address that is not a trusted proxy: a client
            # cannot put another address in front of its own.
            ("two hops", lambda: self.login(server, "nina", pw, "json",
                                            xff("198.51.100.9, 127.0.0.1")),
             lambda r: self.assertLoggedIn(server, r, nina, "nina"),
             ("198.51.100.9", nina, True)),
            ("a spoofed first hop", lambda: self.login(server, "nina", pw, "json",
                                                       xff("192.0.2.66, 198.51.100.8")),
             lambda r: self.assertLoggedIn(server, r, nina, "nina"),
             ("198.51.100.8", nina, True)),
            # Without a forwarded address: the TCP peer.
            ("valid, no X-Forwarded-For", lambda: self.login(server, "nina", pw),
             lambda r: self.assertLoggedIn(server, r, nina, "nina"),
             ("127.0.0.1", nina, True)),
        ]
        want, at_once = [], 0
        for what, send, check, row in steps:
            with self.subTest(what):
                check(send())
            if row is not None:
                want.append(row)
                # Reported, not asserted (a timing): the row is committed
                # before the answer when the store takes it within 50 ms.
                at_once += len(view.auth_logs()) == len(want)
        print(f"\nauth log ({BACKEND}): {at_once} of {len(want)} rows readable right "
              f"after their answer", file=sys.stderr)

        rows = self.wait_auth_logs(view, lambda r: len(r) >= len(want), "every attempt")
        self.assertEqual([(r["request_ip"], r["user_id"], r["success"]) for r in rows],
                         want, f"auth_logs rows {rows}")
        ids = [r["id"] for r in rows]
        self.assertEqual(ids, sorted(set(ids)), f"ids must grow: {rows}")
        finished = datetime.now(timezone.utc)
        for r in rows:
            self.assertRegex(r["request_timestamp"] or "", SQL_TIME_RE, f"row {r}")
            when = sql_time(r["request_timestamp"])
            self.assertTrue(
                started.replace(microsecond=0).timestamp() - CLOCK_SLACK
                <= when.timestamp() <= finished.timestamp() + CLOCK_SLACK,
                f"row {r}: not a UTC time between {started} and {finished}")

        users = {u["username"]: u for u in view.users()}
        self.assertRegex(users["nina"]["date_registered"] or "", SQL_TIME_RE, users)
        self.assertRegex(users["nina"]["last_login"] or "", SQL_TIME_RE,
                         f"nina logged in: {users['nina']}")
        self.assertIsNone(users["olga"]["last_login"],
                          f"olga never logged in: {users['olga']}")
        self.assertLessEqual(abs(sql_time(users["nina"]["last_login"]).timestamp()
                                 - finished.timestamp()), 120, users["nina"])

    def test_no_password_in_logs_tables_or_answers(self):
        server = self.start_server("--login", "required")
        db = server.db
        passwords = [self.register(server, "peggy", "peggy@example.com"),
                     self.register(server, "quinn")]
        res = self.users_cmd(db, "add", "rupert")
        passwords.append(self.shown_password(res))
        cli_output = [res.stderr]
        res = self.users_cmd(db, "passwd", "quinn")
        old_quinn = passwords[1]
        passwords[1] = self.shown_password(res)
        passwords.append(old_quinn)
        cli_output.append(res.stderr)
        # Attempts with wrong passwords are secrets too: never logged.
        wrong = [f"{p[:-4]}beef" if not p.endswith("beef") else f"{p[:-4]}cafe"
                 for p in passwords[:3]]
        answers = []
        for user, pw in (("peggy", passwords[0]), ("quinn", passwords[1]),
                         ("rupert", passwords[2])):
            for how in ("json", "basic"):
                resp = self.login(server, user, pw, how)
                self.token_of(server, resp, f"{user} {how}")
                answers.append(resp)
        for user, pw in zip(("peggy", "quinn", "rupert"), wrong):
            for how in ("json", "basic"):
                answers.append(self.login(server, user, pw, how))
                answers.append(self.login(server, "nobody-" + user, pw, how))
        answers.append(self.login(server, "quinn", old_quinn))
        res = self.users_cmd(db, "list")
        cli_output += [res.stdout, res.stderr]
        res = self.users_cmd(db, "list", "--json")
        cli_output += [res.stdout, res.stderr]
        res = self.users_cmd(db, "lock", "peggy")
        cli_output += [res.stdout, res.stderr]
        answers.append(self.login(server, "peggy", passwords[0]))

        secrets = passwords + wrong
        for i, resp in enumerate(answers):
            self.assertNoSecret(resp.body, secrets, f"answer {i}: {resp.describe()}")
            if resp.status == 200:
                _, claims = split_jwt(resp.json()["token"])
                self.assertNoSecret(json.dumps(claims), secrets, f"token claims {claims}")
            for name, value in resp.headers:
                self.assertNoSecret(value, secrets, f"header {name} of answer {i}")
        for i, text in enumerate(cli_output):
            self.assertNoSecret(text, secrets, f"jwksd users output {i}: {text}")
        view = self.view(server)
        if BACKEND != "lmdb":
            rows = view.users()
            for u in rows:
                m = PHC_RE.fullmatch(u["password_hash"] or "")
                self.assertIsNotNone(m, f"stored hash of {u['username']} is not an "
                                        f"Argon2id PHC string: {u['password_hash']!r}")
                self.assertEqual(m.groups(), DEFAULT_ARGON2, u["password_hash"])
            hashes = [u["password_hash"] for u in rows]
            self.assertEqual(len(set(hashes)), len(hashes), "hashes are salted")
        self.stop_server(server)
        self.assertNoSecret(server.stderr_text(), secrets, "the server's log")
        self.assertNoSecret(view.raw(), secrets, "the store")


class AuthLogPurgeTests(AccountsCase):
    """--auth-log-days N purges older entries in the background (0: never).
    Old entries reach the store under test through `jwksd copy
    --with-auth-log` from a SQLite store written with python's sqlite3."""

    OLD_IP, TEN_DAYS_IP = "192.0.2.1", "192.0.2.10"

    def seeded_store(self):
        """(store, password of user 'old'): entries from 2001 and from ten
        days ago, and no keys yet."""
        src_dir = self.make_tmpdir()
        src = src_dir / "src.db"
        res = run_jwksd(["users", "add", "old", "--backend", "sqlite", "--db", str(src)],
                        cwd=src_dir, timeout=CLI_TIMEOUT)
        self.assertEqual(res.returncode, 0, res.describe())
        pw = self.shown_password(res)
        con = sqlite3.connect(src)
        try:
            con.execute("INSERT INTO auth_logs (request_ip, request_timestamp, user_id) "
                        "VALUES (?, '2001-01-01 00:00:00', NULL)", (self.OLD_IP,))
            con.execute("INSERT INTO auth_logs (request_ip, request_timestamp, user_id) "
                        "VALUES (?, datetime('now', '-10 days'), 1)", (self.TEN_DAYS_IP,))
            con.commit()
        finally:
            con.close()
        db = self.store_path()
        res = run_jwksd(["copy", "--from", f"sqlite:{src}", "--to", f"{BACKEND}:{db}",
                         "--with-auth-log"], cwd=self.tmp, timeout=60)
        self.assertEqual(res.returncode, 0, res.describe())
        return db, pw

    def run_with(self, db, pw, days, want_ips, label):
        """A server with --auth-log-days days; one login; the entries'
        addresses once they are want_ips (in order)."""
        server = self.start_server("--auth-log-days", days, db=db, label=label)
        self.assertLoggedIn(server, self.login(server, "old", pw), 1, "old")
        view = self.view(db)
        rows = self.wait_auth_logs(view, lambda r: [x["request_ip"] for x in r] == want_ips,
                                   f"--auth-log-days {days}")
        self.assertEqual([r["request_ip"] for r in rows], want_ips,
                         f"auth log with --auth-log-days {days}: {rows}")
        self.stop_server(server)

    def test_old_entries_are_purged(self):
        db, pw = self.seeded_store()
        self.run_with(db, pw, "0", [self.OLD_IP, self.TEN_DAYS_IP, "127.0.0.1"], "days-0")
        self.run_with(db, pw, "30", [self.TEN_DAYS_IP, "127.0.0.1", "127.0.0.1"],
                      "days-30")
        self.run_with(db, pw, "5", ["127.0.0.1"] * 3, "days-5")


# ------------------------------------------------------------------ timing

class TimingTests(AccountsCase):
    """An unknown username costs what a wrong password for a real user
    costs (a dummy verification): a measurement, reported on stderr, that
    fails only when the ratio of the medians is outside 0.5-2."""

    ATTEMPTS = 60

    def timed_login(self, server, username, password):
        body = json.dumps({"username": username, "password": password}).encode()
        conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=30)
        try:
            conn.connect()
            started = time.perf_counter()
            conn.request("POST", AUTH_PATH, body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            took = time.perf_counter() - started
        finally:
            conn.close()
        return took, resp.status, data, resp.getheader("WWW-Authenticate")

    def test_unknown_user_costs_the_same_as_a_wrong_password(self):
        server = self.start_server("--login", "required")
        pw = self.register(server, "sybil")
        wrong = pw[::-1]
        for i in range(5):  # warm-up: connections, caches, the first hashes
            self.timed_login(server, "sybil", wrong)
            self.timed_login(server, f"warm-{i}", wrong)
        known, unknown = [], []
        answers = set()
        for i in range(self.ATTEMPTS):
            pair = [("known", "sybil"), ("unknown", f"nobody-{i:03d}")]
            if i % 2:
                pair.reverse()
            for kind, user in pair:
                took, status, data, challenge = self.timed_login(server, user, wrong)
                answers.add((status, data, challenge))
                (known if kind == "known" else unknown).append(took)
        self.assertEqual(answers, {(401, b'{"error":"invalid credentials"}', CHALLENGE)},
                         "an unknown user and a wrong password must get the same answer")
        med_known = statistics.median(known)
        med_unknown = statistics.median(unknown)
        ratio = med_unknown / med_known
        report = (f"login timing ({BACKEND}, {self.ATTEMPTS} each): unknown user median "
                  f"{med_unknown * 1000:.1f} ms, wrong password median "
                  f"{med_known * 1000:.1f} ms, ratio {ratio:.3f}")
        print(f"\n{report}", file=sys.stderr)
        self.assertTrue(0.5 <= ratio <= 2.0, report)


# ------------------------------------------------------------- rate limits

def pipelined_auth(port, addresses, batch=200, results=None):
    """POST /auth without credentials once per address in X-Forwarded-For,
    pipelined on one keep-alive connection in batches; returns a dict of
    status counts (each answer is parsed by its Content-Length).

    A connection the server closed between two batches (its keep-alive
    idle timeout, when this thread was not scheduled for a while on a busy
    machine) is opened again and counted as "reopened"; a close in the
    middle of a batch is counted as "closed" and ends this client.
    """
    counts = {} if results is None else results

    def count(key):
        counts[key] = counts.get(key, 0) + 1

    sock = None
    try:
        for start in range(0, len(addresses), batch):
            chunk = addresses[start:start + batch]
            for _ in range(3):  # the batch, on a reopened connection if need be
                if sock is None:
                    sock = socket.create_connection((LOOPBACK, port), timeout=30)
                got = 0
                try:
                    sock.sendall(b"".join(
                        b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                        b"X-Forwarded-For: " + a.encode() + b"\r\n\r\n" for a in chunk))
                    buf = b""
                    while got < len(chunk):
                        head_end = buf.find(b"\r\n\r\n")
                        if head_end >= 0:
                            head = buf[:head_end]
                            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                            length = int(m.group(1)) if m else 0
                            if len(buf) >= head_end + 4 + length:
                                count(int(head[9:12]))
                                buf = buf[head_end + 4 + length:]
                                got += 1
                                if (b"connection: close" in head.lower()
                                        and got < len(chunk)):
                                    count("closed")
                                    return counts
                                continue
                        data = sock.recv(1 << 20)
                        if not data:
                            raise ConnectionResetError("end of stream")
                        buf += data
                    break
                except ConnectionError:
                    sock.close()
                    sock = None
                    if got:
                        count("closed")
                        return counts
                    count("reopened")
            else:
                count("closed")
                return counts
    finally:
        if sock is not None:
            sock.close()
    return counts


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def binary_sanitizer():
    from test_load import sanitizer
    return sanitizer()


class RateLimitTests(AccountsCase):

    ATTEMPTS = 5  # a burst that took longer than its window says nothing

    def burst(self, server, headers, spacing, count=10):
        """count anonymous POST /auth spaced `spacing` s apart. Returns
        (answers, the monotonic time of the first send)."""
        answers = []
        t0 = time.monotonic()
        for i in range(count):
            delay = t0 + i * spacing - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            answers.append(self.request(server, "POST", AUTH_PATH, body=b"",
                                        headers=headers))
        return answers, t0

    def test_sliding_window_auth_rate(self):
        """10 requests 0.1 s apart pass, an 11th right after is refused,
        another client is not affected, refused requests leave no row."""
        server = self.start_server("--auth-rate", "10", "--trust-proxy", "127.0.0.1/32")
        pw = self.register(server, "trudy")
        uid = self.user_id(server.db, "trudy")
        for attempt in range(self.ATTEMPTS):
            client = f"192.0.2.{10 + attempt}"
            hdrs = {"X-Forwarded-For": client}
            answers, t0 = self.burst(server, hdrs, 0.1)
            # Right after: the 11th, and two more, with credentials (each
            # would cost a hash and leave an auth-log row if it passed).
            extra = []
            for how, user in (("json", "trudy"), ("basic", "trudy"), ("json", "nobody")):
                resp = self.login(server, user, pw, how, hdrs)
                extra.append((resp, time.monotonic() - t0))
            for i, resp in enumerate(answers):
                self.assertAnonymous(server, resp, f"request {i + 1} of 10, 0.1 s apart")
            if extra[0][1] >= 1.0:
                continue  # the first request may have left the window: again
            for i, (resp, after) in enumerate(extra):
                if after < 1.0:
                    self.assertTooMany(resp, f"request {11 + i} within one second", 1)
            break
        else:
            self.skipTest(f"no burst of 11 requests fit into one second in "
                          f"{self.ATTEMPTS} attempts: the machine is too busy")
        # Another client address, and the proxy itself, are not affected.
        self.assertLoggedIn(server, self.login(server, "trudy", pw, "json",
                                               {"X-Forwarded-For": "192.0.2.99"}),
                            uid, "trudy", "another client address")
        self.assertAnonymous(server, self.request(server, "POST", AUTH_PATH, body=b""),
                             "the peer's own address")
        # The window slides: a second later the client is served again.
        time.sleep(1.1)
        self.assertLoggedIn(server, self.login(server, "trudy", pw, "json", hdrs),
                            uid, "trudy", "after the window")
        # Rows: one per login that was checked, none for the refused ones
        # (of the last burst: an inconclusive burst's 11th may have passed).
        view = self.view(server)
        rows = self.wait_auth_logs(
            view, lambda r: sum(x["request_ip"] in (client, "192.0.2.99") for x in r) >= 2,
            "two logins")
        mine = [(r["request_ip"], r["user_id"]) for r in rows
                if r["request_ip"] in (client, "192.0.2.99")]
        self.assertEqual(mine, [("192.0.2.99", uid), (client, uid)],
                         f"refused requests must leave no auth-log row: {rows}")

    def test_forwarded_for_believed_only_from_trusted_proxies(self):
        for args in ((), ("--trust-proxy", "10.0.0.0/8"),
                     ("--trust-proxy", "::1/128")):
            with self.subTest(args=args):
                work = self.make_tmpdir()
                server = self.start_server("--auth-rate", "10", *args, workdir=work,
                                           label=f"proxy-{len(args)}")
                pw = self.register(server, "victor")
                uid = self.user_id(server.db, "victor")
                self.assertLoggedIn(server, self.login(
                    server, "victor", pw, "json", {"X-Forwarded-For": "203.0.113.9"}),
                    uid, "victor")
                view = self.view(server)
                rows = self.wait_auth_logs(view, lambda r: len(r) >= 1, "a login")
                self.assertEqual([r["request_ip"] for r in rows], ["127.0.0.1"],
                                 f"X-Forwarded-For believed from an untrusted peer: {rows}")
                # Changing X-Forwarded-For does not escape the limit.
                for attempt in range(self.ATTEMPTS):
                    time.sleep(1.1)
                    t0 = time.monotonic()
                    answers = [self.request(server, "POST", AUTH_PATH, body=b"",
                                            headers={"X-Forwarded-For": f"203.0.113.{i}"})
                               for i in range(11)]
                    if time.monotonic() - t0 < 1.0:
                        break
                else:
                    self.skipTest("no 11 requests fit into one second")
                self.assertEqual([r.status for r in answers[:10]], [200] * 10)
                self.assertTooMany(answers[10], "11th with a new X-Forwarded-For", 1)
                self.stop_server(server)

    def test_default_auth_rate_is_10_per_second(self):
        server = self.new_server()
        server.limits_off = False  # no --auth-rate: the default
        server.start()
        self.assertNotIn("--auth-rate", server.command())
        for attempt in range(self.ATTEMPTS):
            time.sleep(1.1)
            t0 = time.monotonic()
            answers = [self.request(server, "POST", AUTH_PATH, body=b"")
                       for _ in range(11)]
            if time.monotonic() - t0 < 1.0:
                break
        else:
            self.skipTest("no 11 requests fit into one second")
        self.assertEqual([r.status for r in answers[:10]], [200] * 10,
                         [r.describe() for r in answers if r.status != 200][:2])
        self.assertTooMany(answers[10], "the 11th within a second, default limit", 1)

    def test_auth_rate_0_disables_the_limit(self):
        server = self.start_server("--auth-rate", "0")
        statuses = [self.request(server, "POST", AUTH_PATH, body=b"").status
                    for _ in range(40)]
        self.assertEqual(statuses, [200] * 40)

    def test_register_rate_default_5_per_minute(self):
        server = self.new_server("--trust-proxy", "127.0.0.1/32", "--auth-rate", "0")
        server.limits_off = False  # no --register-rate: the default
        server.start()
        a = {"X-Forwarded-For": "198.18.0.1"}
        t0 = time.monotonic()
        for i in range(5):
            self.register(server, f"walter{i}", headers=a)
        sixth = self.post_json(server, REGISTER_PATH, {"username": "walter5"}, a)
        if time.monotonic() - t0 >= 60:
            self.skipTest("six registrations took a minute")
        self.assertTooMany(sixth, "6th registration within a minute", 60)
        # Even a bad body is refused before it is read.
        self.assertTooMany(self.post_json(server, REGISTER_PATH, b"{", a),
                           "a bad body over the limit", 60)
        self.register(server, "walter6", headers={"X-Forwarded-For": "198.18.0.2"})
        names = sorted(u["username"] for u in self.users_json(server.db))
        self.assertEqual(names, [f"walter{i}" for i in (0, 1, 2, 3, 4, 6)])

    def test_register_rate_0_disables_the_limit(self):
        server = self.start_server("--register-rate", "0")
        for i in range(8):
            self.register(server, f"xavier{i}")

    # The limiter's table is 8 MiB per route (server/accounts.c); the rest
    # of the bound is slack for the allocator.
    FLOOD_GROWTH_KIB = 32 * 1024
    # A bounded table is fully touched by the first flood: the second one
    # may only add allocator noise.
    SECOND_FLOOD_KIB = 4 * 1024

    def test_flood_of_addresses_keeps_memory_bounded(self):
        """100,000 distinct client addresses (X-Forwarded-For from a
        trusted proxy): the limiter's table is bounded, so the server's
        resident memory grows by less than FLOOD_GROWTH_KIB; a second
        flood grows it by almost nothing; the limit still works after."""
        # ES256 tokens: cheap signatures, so the flood measures the limiter.
        server = self.start_server("--auth-rate", "10", "--trust-proxy",
                                   "127.0.0.1/32", "--alg", "ES256")
        pid = server.proc.pid
        conns = 4
        reopened = [0]

        def flood(prefix, n):
            addrs = [f"{prefix}.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(n)]
            results = [dict() for _ in range(conns)]
            threads = [threading.Thread(target=pipelined_auth,
                                        args=(server.port, addrs[k::conns], 200, results[k]))
                       for k in range(conns)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            total = {}
            for r in results:
                for k, v in r.items():
                    total[k] = total.get(k, 0) + v
            reopened[0] += total.pop("reopened", 0)
            return total

        # Connections and worker threads exist before the baseline; few
        # addresses, so that the baseline does not hold the limiter's table.
        warm = flood("11", 400)
        self.assertEqual(warm, {200: 400}, "warm-up")
        base = proc_status_kib(pid, "VmRSS")
        started = time.monotonic()
        first = flood("10", 100_000)
        took = time.monotonic() - started
        after_first = proc_status_kib(pid, "VmRSS")
        self.assertEqual(first, {200: 100_000},
                         "every address of the flood gets its one token")
        second = flood("12", 100_000)
        self.assertEqual(second, {200: 100_000})
        after_second = proc_status_kib(pid, "VmRSS")
        report = (f"flood ({BACKEND}): VmRSS {base} KiB before, {after_first} KiB after "
                  f"100,000 addresses ({took:.1f} s), {after_second} KiB after another "
                  f"100,000; connections reopened after an idle close: {reopened[0]}")
        print(f"\n{report}", file=sys.stderr)
        if binary_sanitizer() is None:
            self.assertLess(after_first - base, self.FLOOD_GROWTH_KIB, report)
            self.assertLess(after_second - after_first, self.SECOND_FLOOD_KIB, report)
        # The limiter still limits a client after the flood.
        for attempt in range(self.ATTEMPTS):
            hdrs = {"X-Forwarded-For": f"192.0.2.{200 + attempt}"}
            t0 = time.monotonic()
            answers = [self.request(server, "POST", AUTH_PATH, body=b"", headers=hdrs)
                       for _ in range(11)]
            if time.monotonic() - t0 < 1.0:
                break
        else:
            self.skipTest("no 11 requests fit into one second")
        self.assertEqual([r.status for r in answers[:10]], [200] * 10)
        self.assertTooMany(answers[10], "the 11th after the flood", 1)
        self.assertTrue(server.running)


if __name__ == "__main__":
    unittest.main()
