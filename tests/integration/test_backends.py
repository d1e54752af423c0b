"""Backend choice, shared stores, copying between backends, a full LMDB map.

Runs against the real jwksd binary (env JWKSD_BIN). Tests that need a backend
that is not compiled in are skipped with the reason.
"""

import os
import re
import sqlite3
import time
import unittest

import jwt

from harness import (
    BACKEND, JwksdTestCase, jwks_kids, jwk_for_kid, run_jwksd, split_jwt,
)


def compiled_backends():
    """The backend names `jwksd --help` lists."""
    import subprocess
    from harness import jwksd_bin
    out = subprocess.run([jwksd_bin(), "--help"], capture_output=True,
                         text=True, timeout=10).stdout
    line = next(l for l in out.splitlines() if l.startswith("backends:"))
    # "backends: sqlite (default file) ... postgres (connection string)"
    return re.sub(r"\([^)]*\)", " ", line).split()[1:]


BACKENDS = compiled_backends()


def needs(*names):
    missing = [n for n in names if n not in BACKENDS]
    return unittest.skipIf(missing, f"backend(s) {missing} not compiled in")


class BackendChoiceTests(JwksdTestCase):

    def test_help_lists_every_backend(self):
        # The build's options, passed by tests/CMakeLists.txt.
        expected = os.environ.get("JWKS_EXPECT_BACKENDS")
        if not expected:
            self.fail("set JWKS_EXPECT_BACKENDS to the backends this build "
                      "compiles in (comma-separated), as CTest does")
        res = run_jwksd(["--help"], cwd=self.tmp)
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertEqual(sorted(BACKENDS), sorted(expected.split(",")), res.describe())
        self.assertEqual(BACKENDS[0], "sqlite", f"the default comes first: {BACKENDS}")

    def test_unknown_backend_exits_2_and_lists_the_valid_ones(self):
        res = run_jwksd(["--backend", "nosuchstore", "--listen",
                         "127.0.0.1:0"], cwd=self.tmp)
        self.assertEqual(res.returncode, 2, res.describe())
        self.assertIn("nosuchstore", res.stderr, res.describe())
        for name in BACKENDS:
            self.assertIn(name, res.stderr, res.describe())
        self.assertEqual(list(self.tmp.iterdir()), [],
                         "an unknown backend must not create a store")

    @needs("lmdb")
    def test_lmdb_default_store_name_in_current_directory(self):
        server = self.new_server(backend="lmdb")
        server.db = None  # no --db: the default name in the working directory
        server.start()
        self.post_auth(server)
        self.assertTrue((self.tmp / "totally_not_my_privateKeys.lmdb").exists(),
                        list(self.tmp.iterdir()))


class SharedStoreTests(JwksdTestCase):
    """Two servers on one store: a key one adds shows up in the other."""

    def test_key_added_by_another_process_is_published_within_a_second(self):
        a = self.start_server(label="a")
        kids_a = set(jwks_kids(self.get_jwks(a)))
        self.assertEqual(len(kids_a), 1, kids_a)
        # b's --margin is longer than a's key has left (it expires in a day),
        # so for b no published key may sign (a token's exp must stay margin
        # before its key's exp) and b adds a key that signs at once.
        b = self.start_server("--margin", "90000", "--key-ttl", "200000",
                              db=a.db, label="b")
        added_kids = self.wait_for(
            "b adding a key", lambda: set(jwks_kids(self.get_jwks(b))) - kids_a,
            timeout=10)
        added = time.monotonic()
        new_kid = added_kids.pop()
        while time.monotonic() < added + 1.0:
            if new_kid in jwks_kids(self.get_jwks(a)):
                break
            time.sleep(0.02)
        else:
            self.failure(f"a did not publish kid {new_kid} within 1 s: "
                         f"{jwks_kids(self.get_jwks(a))}")
        # A token b signs with the new key verifies against a's JWKS.
        _, token = self.post_auth(b)
        self.assertEqual(jwt.get_unverified_header(token)["kid"], new_kid)
        self.verify_with_served_jwks(a, token)


@needs("sqlite", "lmdb")
class CopyTests(JwksdTestCase):
    """jwksd copy moves every key with its kid and expiry, both ways."""

    def sqlite_rows(self, path):
        with sqlite3.connect(path) as db:
            return db.execute(
                "SELECT kid, key, exp FROM keys ORDER BY kid").fetchall()

    def copy(self, src, dst, *extra):
        return run_jwksd(["copy", "--from", src, "--to", dst, *extra],
                         cwd=self.tmp, timeout=30)

    def test_sqlite_to_lmdb_and_back_keeps_kids_expiries_and_tokens(self):
        src = self.tmp / "a.db"
        first = self.start_server(backend="sqlite", db=src, label="sqlite")
        _, token = self.post_auth(first)
        _, expired = self.post_auth(first, "expired=true")
        kids = jwks_kids(self.get_jwks(first))
        self.stop_server(first)
        before = self.sqlite_rows(src)
        self.assertEqual(len(before), 2, before)

        res = self.copy(f"sqlite:{src}", f"lmdb:{self.tmp / 'b.lmdb'}")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 2 keys", res.stdout, res.describe())

        second = self.start_server(backend="lmdb", db=self.tmp / "b.lmdb",
                                   label="lmdb")
        self.assertEqual(jwks_kids(self.get_jwks(second)), kids)
        self.verify_with_served_jwks(second, token)
        _, expired2 = self.post_auth(second, "expired=true")
        self.assertEqual(split_jwt(expired2)[0]["kid"],
                         split_jwt(expired)[0]["kid"],
                         "the expired key kept its kid")
        self.stop_server(second)

        res = self.copy(f"lmdb:{self.tmp / 'b.lmdb'}",
                        f"sqlite:{self.tmp / 'c.db'}")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertEqual(self.sqlite_rows(self.tmp / "c.db"), before,
                         "kid, key bytes and exp survive the round trip")

        # New keys after a copy get kids above the copied ones. A --margin
        # longer than the copied key has left makes the server add one.
        third = self.start_server("--margin", "90000", "--key-ttl",
                                  "200000", backend="lmdb",
                                  db=self.tmp / "b.lmdb", label="lmdb2")

        def more_kids():
            now = jwks_kids(self.get_jwks(third))
            return now if len(now) > len(kids) else None
        now_kids = self.wait_for("a key added after the copy", more_kids, timeout=10)
        self.assertGreater(max(int(k) for k in now_kids),
                           max(row[0] for row in before), now_kids)

    def test_copy_refuses_a_non_empty_destination_unless_merging(self):
        src = self.tmp / "a.db"
        self.stop_server(self.start_server(backend="sqlite", db=src))
        dst = self.tmp / "b.lmdb"
        self.assertEqual(self.copy(f"sqlite:{src}", f"lmdb:{dst}").returncode, 0)
        res = self.copy(f"sqlite:{src}", f"lmdb:{dst}")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn("not empty", res.stderr, res.describe())
        res = self.copy(f"sqlite:{src}", f"lmdb:{dst}", "--merge")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 0 keys", res.stdout, res.describe())

    def test_merge_refuses_a_conflicting_kid_before_writing(self):
        a, b = self.tmp / "a.db", self.tmp / "b.db"
        self.stop_server(self.start_server(backend="sqlite", db=a, label="a"))
        self.stop_server(self.start_server(backend="sqlite", db=b, label="b"))
        before = self.sqlite_rows(b)
        res = self.copy(f"sqlite:{a}", f"sqlite:{b}", "--merge")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn("kid", res.stderr, res.describe())
        self.assertEqual(self.sqlite_rows(b), before, "nothing was written")

    def test_a_failed_lifecycle_write_leaves_the_destination_unchanged(self):
        """Keys and their lifecycle entries go in together: when the entries
        cannot be written (a trigger refuses them), no key is copied, and a
        rerun with --merge copies keys WITH entries (revoked stays revoked)."""
        src = self.tmp / "a.lmdb"
        self.stop_server(self.start_server(backend="lmdb", db=src))
        before = self.key_list(db=src, backend="lmdb", timeout=30)
        self.assertEqual(len(before), 2, before)
        signing = next(k for k, e in before.items() if e["state"] != "expired")
        res = run_jwksd(["keys", "revoke", signing, "--backend", "lmdb",
                         "--db", str(src)], cwd=self.tmp, timeout=30)
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertEqual(self.key_list(db=src, backend="lmdb", timeout=30)[signing]["state"],
                         "revoked")

        dst = self.tmp / "b.db"
        with sqlite3.connect(dst) as db:
            db.execute("CREATE TABLE keys(kid INTEGER PRIMARY KEY "
                       "AUTOINCREMENT, key BLOB NOT NULL, exp INTEGER NOT NULL)")
            db.execute("CREATE TABLE key_lifecycle(kid INTEGER PRIMARY KEY, "
                       "created INTEGER NOT NULL, activate_at INTEGER NOT NULL, "
                       "retire_at INTEGER NOT NULL, revoked_at INTEGER)")
            db.execute("CREATE TRIGGER no_life BEFORE INSERT ON key_lifecycle "
                       "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        db.close()
        res = self.copy(f"lmdb:{src}", f"sqlite:{dst}")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertEqual(self.sqlite_rows(dst), [],
                         "a failed copy wrote keys without their entries")

        with sqlite3.connect(dst) as db:
            db.execute("DROP TRIGGER no_life")
        db.close()
        res = self.copy(f"lmdb:{src}", f"sqlite:{dst}", "--merge")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 2 keys", res.stdout, res.describe())
        after = self.key_list(db=dst, backend="sqlite", timeout=30)
        self.assertEqual(set(after), set(before))
        self.assertEqual(after[signing]["state"], "revoked", after[signing])
        self.assertIn("revoked_at", after[signing])
        with sqlite3.connect(dst) as db:
            n = db.execute("SELECT count(*) FROM key_lifecycle").fetchone()[0]
        db.close()
        self.assertEqual(n, 2, "every copied key has its lifecycle entry")

    def test_merge_adds_the_entries_an_earlier_copy_lost(self):
        """A destination holding the keys without entries (what a copy that
        failed after its keys left) gets them from a --merge rerun."""
        src = self.tmp / "a.db"
        self.stop_server(self.start_server(backend="sqlite", db=src))
        before = self.key_list(db=src, backend="sqlite", timeout=30)
        signing = next(k for k, e in before.items() if e["state"] != "expired")
        res = run_jwksd(["keys", "revoke", signing, "--backend", "sqlite",
                         "--db", str(src)], cwd=self.tmp, timeout=30)
        self.assertEqual(res.returncode, 0, res.describe())
        dst = self.tmp / "b.db"
        res = self.copy(f"sqlite:{src}", f"sqlite:{dst}")
        self.assertEqual(res.returncode, 0, res.describe())
        with sqlite3.connect(dst) as db:
            db.execute("DELETE FROM key_lifecycle")
        db.close()
        res = self.copy(f"sqlite:{src}", f"sqlite:{dst}", "--merge")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 0 keys", res.stdout, res.describe())
        self.assertEqual(self.key_list(db=dst, backend="sqlite", timeout=30)[signing]["state"],
                         "revoked")

    ACCOUNT_TABLES = (
        "CREATE TABLE IF NOT EXISTS users(id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL, "
        "email TEXT UNIQUE, date_registered TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
        "last_login TIMESTAMP)",
        "CREATE TABLE IF NOT EXISTS auth_logs(id INTEGER PRIMARY KEY "
        "AUTOINCREMENT, request_ip TEXT NOT NULL, request_timestamp TIMESTAMP "
        "DEFAULT CURRENT_TIMESTAMP, user_id INTEGER, "
        "FOREIGN KEY(user_id) REFERENCES users(id))")

    def account_store(self, path):
        """A store with keys (from a server) and accounts written the way
        the assignment's own Python writes them: timestamps by default."""
        self.stop_server(self.start_server(backend="sqlite", db=path))
        with sqlite3.connect(path) as db:
            for sql in self.ACCOUNT_TABLES:
                db.execute(sql)
            db.execute("INSERT INTO users (username, password_hash, email) "
                       "VALUES ('alice', '$argon2id$v=19$a', 'a@example.org')")
            db.execute("INSERT INTO users (username, password_hash) "
                       "VALUES ('gone', 'x')")
            db.execute("INSERT INTO users (username, password_hash, last_login) "
                       "VALUES ('o''brien \u540d', 'y', '2024-05-06 07:08:09')")
            db.execute("DELETE FROM users WHERE username = 'gone'")
            db.execute("INSERT INTO auth_logs (request_ip, user_id) "
                       "VALUES ('127.0.0.1', 1)")
            db.execute("INSERT INTO auth_logs (request_ip, request_timestamp) "
                       "VALUES ('::1', '2024-01-02 03:04:05')")
        db.close()

    def account_rows(self, path):
        with sqlite3.connect(path) as db:
            rows = (db.execute("SELECT * FROM users ORDER BY id").fetchall(),
                    db.execute("SELECT * FROM auth_logs ORDER BY id").fetchall())
        db.close()
        return rows

    def test_users_and_auth_log_copy_both_ways_as_they_are(self):
        src, back = self.tmp / "a.db", self.tmp / "c.db"
        self.account_store(src)
        users, logs = self.account_rows(src)
        self.assertEqual(len(users), 2)
        res = self.copy(f"sqlite:{src}", f"lmdb:{self.tmp / 'b.lmdb'}",
                        "--with-auth-log")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 2 keys, 2 users and 2 auth-log entries",
                      res.stdout, res.describe())
        res = self.copy(f"lmdb:{self.tmp / 'b.lmdb'}", f"sqlite:{back}",
                        "--with-auth-log")
        self.assertEqual(res.returncode, 0, res.describe())
        # Ids, names, hashes and the text of every timestamp come back as
        # they were: the form CURRENT_TIMESTAMP writes, in UTC.
        self.assertEqual(self.account_rows(back), (users, logs))
        stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        for row in users:
            self.assertRegex(row[4], stamp, row)
        for row in logs:
            self.assertRegex(row[2], stamp, row)
        with sqlite3.connect(back) as db:
            typed = db.execute(
                "SELECT typeof(date_registered), typeof(last_login) "
                "FROM users ORDER BY id").fetchall()
        db.close()
        self.assertEqual(typed, [("text", "null"), ("text", "text")])

    def test_auth_log_is_copied_only_when_asked(self):
        src, dst = self.tmp / "a.db", self.tmp / "b.db"
        self.account_store(src)
        res = self.copy(f"sqlite:{src}", f"sqlite:{dst}")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 2 keys and 2 users", res.stdout, res.describe())
        users, logs = self.account_rows(dst)
        self.assertEqual((len(users), logs), (2, []))
        res = self.copy(f"sqlite:{src}", f"sqlite:{dst}", "--merge",
                        "--with-auth-log")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 0 keys, 0 users and 2 auth-log entries",
                      res.stdout, res.describe())
        self.assertEqual(self.account_rows(dst), self.account_rows(src))

    def test_a_conflicting_user_stops_the_copy_before_writing(self):
        src, dst = self.tmp / "a.db", self.tmp / "b.db"
        self.account_store(src)
        with sqlite3.connect(dst) as db:
            for sql in self.ACCOUNT_TABLES:
                db.execute(sql)
            db.execute("INSERT INTO users (id, username, password_hash) "
                       "VALUES (7, 'alice', 'another')")
        db.close()
        before = self.account_rows(dst)
        res = self.copy(f"sqlite:{src}", f"sqlite:{dst}", "--merge",
                        "--with-auth-log")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn("username of user 1 is taken by user 7", res.stderr,
                      res.describe())
        self.assertEqual(self.account_rows(dst), before)
        self.assertEqual(self.sqlite_rows(dst), [], "keys were written")

    def test_copy_usage_errors_exit_2(self):
        for args in (["copy"], ["copy", "--from", "sqlite:x.db"],
                     ["copy", "--from", "nosuch:x", "--to", "sqlite:y.db"],
                     ["copy", "--from", "x.db", "--to", "sqlite:y.db"]):
            res = run_jwksd(args, cwd=self.tmp)
            self.assertEqual(res.returncode, 2, res.describe())


def blob_hex(value):
    """A key blob as hex, whether SQLite returns it as bytes or text."""
    if isinstance(value, str):
        value = value.encode()
    return bytes(value).hex()


@needs("sqlite", "postgres")
@unittest.skipUnless(BACKEND == "postgres",
                     "copies to PostgreSQL run in the postgres run of this "
                     "suite, which has the test server")
class PostgresCopyTests(JwksdTestCase):
    """jwksd copy between SQLite and PostgreSQL, both ways."""

    def copy(self, src, dst, *extra):
        return run_jwksd(["copy", "--from", src, "--to", dst, *extra],
                         cwd=self.tmp, timeout=60)

    def sqlite_rows(self, path):
        with sqlite3.connect(path) as db:
            return [(kid, blob_hex(key), exp) for kid, key, exp in db.execute(
                "SELECT kid, key, exp FROM keys ORDER BY kid")]

    def pg_rows(self, store):
        return [(int(kid), key, int(exp)) for kid, key, exp in store.rows(
            "SELECT kid, encode(key, 'hex'), exp FROM keys ORDER BY kid")]

    def test_sqlite_to_postgres_and_back_keeps_kids_expiries_and_tokens(self):
        src = self.tmp / "a.db"
        first = self.start_server(backend="sqlite", db=src, label="sqlite")
        _, token = self.post_auth(first)
        _, expired = self.post_auth(first, "expired=true")
        kids = jwks_kids(self.get_jwks(first))
        self.stop_server(first)
        before = self.sqlite_rows(src)
        self.assertEqual(len(before), 2, before)

        store = self.store_path()
        res = self.copy(f"sqlite:{src}", f"postgres:{store}")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 2 keys", res.stdout, res.describe())
        self.assertEqual(self.pg_rows(store), before,
                         "kid, key bytes and exp in the PostgreSQL table")

        second = self.start_server(db=store, label="postgres")
        self.assertEqual(jwks_kids(self.get_jwks(second)), kids)
        self.verify_with_served_jwks(second, token)
        _, expired2 = self.post_auth(second, "expired=true")
        self.assertEqual(split_jwt(expired2)[0]["kid"],
                         split_jwt(expired)[0]["kid"],
                         "the expired key kept its kid")
        self.stop_server(second)

        res = self.copy(f"postgres:{store}", f"sqlite:{self.tmp / 'c.db'}")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertEqual(self.sqlite_rows(self.tmp / "c.db"), before,
                         "kid, key bytes and exp survive the round trip")

        # New keys after a copy get kids above the copied ones.
        third = self.start_server("--margin", "90000", "--key-ttl", "200000",
                                  db=store, label="postgres2")

        def more_kids():
            now = jwks_kids(self.get_jwks(third))
            return now if len(now) > len(kids) else None
        now_kids = self.wait_for("a key added after the copy", more_kids, timeout=10)
        self.assertGreater(max(int(k) for k in now_kids),
                           max(row[0] for row in before), now_kids)

    def test_copy_refuses_a_non_empty_postgres_store_unless_merging(self):
        src = self.tmp / "a.db"
        self.stop_server(self.start_server(backend="sqlite", db=src))
        store = self.store_path()
        self.assertEqual(self.copy(f"sqlite:{src}", f"postgres:{store}").returncode, 0)
        res = self.copy(f"sqlite:{src}", f"postgres:{store}")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn("not empty", res.stderr, res.describe())
        res = self.copy(f"sqlite:{src}", f"postgres:{store}", "--merge")
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn("copied 0 keys", res.stdout, res.describe())


@needs("lmdb")
class LmdbMapFullTests(JwksdTestCase):

    def test_full_map_logs_a_clear_error_and_reads_keep_working(self):
        # Keys that live 2 s and sign for 1 s (nothing is published ahead:
        # --jwks-max-age 0 --margin 0) make the server add one about every
        # second, until the 64 KiB map is full.
        server = self.start_server("--lmdb-map-size", "64K", "--key-ttl", "2",
                                   "--token-ttl", "1", "--jwks-max-age", "0",
                                   "--margin", "0", backend="lmdb")

        def full():
            self.assertTrue(server.running, "the server must not crash")
            return "store is full" in server.stderr_text()
        self.wait_for("a 'store is full' log line", full, timeout=40, interval=0.2)
        self.assertTrue(server.running, "the server must not crash")
        jwks = self.get_jwks(server)
        resp = self.request(server, "POST", "/auth")
        if resp.status == 200:
            self.verify_with_served_jwks(server, resp.json()["token"])
        else:
            # Every key expired and none could be added: a clean 503.
            self.assertJsonError(resp, 503, "POST /auth with a full map")
        self.assertIsInstance(jwks["keys"], list)


if __name__ == "__main__":
    unittest.main()
