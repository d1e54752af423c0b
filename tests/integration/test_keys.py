"""Keys at rest and key administration, on the backend from KS_TEST_BACKEND.

Encryption at rest: with a secret ($NOT_MY_KEY or --kek-file) no stored
value carries a PEM header and tokens still verify; a wrong or missing
secret stops jwksd with exit 1 and leaves the store as it was; a sealed blob
moved into another row is refused; a plaintext store is encrypted once at
start; `jwksd keys rewrap` moves a store to a new secret.

Key administration: `jwksd keys list|rotate|revoke|export-public|purge`
against a store a server is running on, which reflects each change within
a second.

Store contents are read as records {kid: (blob, exp)} and lifecycle rows:
directly from the SQLite file, or, for LMDB, through `jwksd copy --from
lmdb:... --to sqlite:...` of a scratch copy of the data file (the store
under test is never opened by the reader). The LMDB data file's bytes are
also searched for a PEM header.
"""

import json
import os
import sqlite3
import time
from pathlib import Path

import jwt

from harness import (
    sha256, as_bytes,
    BACKEND, CLOCK_SLACK, DEFAULT_STORE_NAMES, JwksdTestCase, PgStore,
    file_backends_only, free_port, pg_records, jwk_for_kid, jwks_kids, run_jwksd, split_jwt,
    store_display,
)

SECRET_ENV = "NOT_MY_KEY"
PEM_HEADER = b"-----BEGIN"
SEALED_MAGIC = b"JWKE"
STORE_NAME = DEFAULT_STORE_NAMES.get(BACKEND, "store")

# A running server shows a store change within a second. The bound is how
# long a test waits, not a speed target: 1.5 s was too short on a loaded
# machine, a passing run returns as soon as the change shows.
NOTICE = 10.0
# A change that needs a new RSA key first (generated in the background).
KEYGEN_NOTICE = 10.0

# The server's and the keys commands' default schedule.
DEFAULT_MAX_AGE = 300
DEFAULT_MARGIN = 300


def sqlite_state(path):
    """({kid: (blob, exp)}, [lifecycle rows]) of a SQLite store, read-only."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        records = {str(kid): (as_bytes(key), exp) for kid, key, exp in
                   con.execute("SELECT kid, key, exp FROM keys ORDER BY kid")}
        try:
            life = con.execute("SELECT * FROM key_lifecycle ORDER BY kid").fetchall()
        except sqlite3.OperationalError:
            life = []
        return records, life
    finally:
        con.close()


def pg_state(store):
    """({kid: (blob, exp)}, [lifecycle rows]) of a PostgreSQL store (psql)."""
    records = pg_records(store)
    life = [tuple(int(v) for v in row)
            for row in store.rows("SELECT * FROM key_lifecycle ORDER BY kid")]
    return records, life


def pg_table_files(store):
    """The data files of the keys table and its TOAST table on the (local)
    server, after a CHECKPOINT wrote every dirty page to them."""
    store.psql("CHECKPOINT")
    datadir = store.psql("SHOW data_directory").strip()
    rels = store.rows(
        "SELECT pg_relation_filepath(c.oid), pg_relation_filepath(c.reltoastrelid) "
        "FROM pg_class c WHERE c.oid = 'keys'::regclass")
    return [Path(datadir) / rel for rel in rels[0] if rel]


class KeysTestCase(JwksdTestCase):
    """Base class: no secret in the environment unless a test sets one, and
    helpers for the keys commands and the store's contents."""

    wait_timeout = NOTICE

    def setUp(self):
        super().setUp()
        self.set_secret(None)

    # -- the secret

    def set_secret(self, value):
        """Set (or with None unset) $NOT_MY_KEY for every process this test
        starts from now on; restored after the test."""
        old = os.environ.get(SECRET_ENV)

        def restore():
            if old is None:
                os.environ.pop(SECRET_ENV, None)
            else:
                os.environ[SECRET_ENV] = old
        self.addCleanup(restore)
        if value is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = value

    def kek_file(self, name, secret, mode=0o600):
        path = self.tmp / name
        path.write_text(secret + "\n")
        os.chmod(path, mode)
        return path

    # -- commands

    def run_server_to_exit(self, *args, db=None, timeout=15):
        """Run the server where it must fail: returns the RunResult; fails
        if it ever accepted a connection."""
        port = free_port()
        db = self.store_path() if db is None else db
        res = run_jwksd(["--listen", f"127.0.0.1:{port}", "--backend", BACKEND,
                         "--db", str(db), *args], cwd=self.tmp, timeout=timeout,
                        watch_port=port)
        self.assertFalse(res.listened, f"jwksd listened:\n{res.describe()}")
        return res

    # -- the store

    def state(self, db=None, backend=BACKEND):
        """({kid: (blob, exp)}, [lifecycle rows]) of the store."""
        db = self.store_path() if db is None else db
        if isinstance(db, PgStore):
            return pg_state(db)
        db = Path(db)
        if backend == "sqlite":
            return sqlite_state(db)
        return sqlite_state(self.lmdb_as_sqlite(db))

    def fingerprint(self, db=None):
        """Everything a failed start must leave as it was: the records, the
        lifecycle rows and the store file's bytes."""
        db = self.store_path() if db is None else db
        records, life = self.state(db)
        if isinstance(db, PgStore):
            # Every write bumps the change counter in its transaction.
            return records, life, db.psql("SELECT * FROM change_counter")
        return records, life, sha256(db)

    def assertNoPem(self, db=None, what="", raw=(BACKEND == "lmdb")):
        """No stored value holds a PEM header and each one is sealed; with
        raw (the default for LMDB) no PEM header anywhere in the files."""
        db = self.store_path() if db is None else db
        records, _ = self.state(db)
        self.assertTrue(records, f"{what}: the store is empty")
        for kid, (blob, _) in records.items():
            self.assertNotIn(PEM_HEADER, blob, f"{what}: kid {kid} is stored as PEM")
            self.assertTrue(blob.startswith(SEALED_MAGIC),
                            f"{what}: kid {kid} is not a sealed blob: {blob[:16]!r}")
        if raw:
            self.assertNoPemOnDisk(db, what)
        return records

    def assertNoPemOnDisk(self, db, what=""):
        """No PEM header in the bytes of the store's files (SQLite: the
        database and its -wal; LMDB: the data file)."""
        if isinstance(db, PgStore):
            # The table's heap and TOAST files (the WAL is outside jwksd's
            # reach, as a backup is).
            files = pg_table_files(db)
        else:
            files = [db] + ([Path(f"{db}-wal")] if BACKEND == "sqlite" else [])
        for path in files:
            if not path.exists():
                continue
            data = path.read_bytes()
            offsets, at = [], data.find(PEM_HEADER)
            while at >= 0:
                offsets.append(at)
                at = data.find(PEM_HEADER, at + 1)
            if offsets:
                at = offsets[0]
                self.failure(f"{what}: {path.name} ({len(data)} bytes) holds "
                             f"{len(offsets)} PEM header(s) at offsets {offsets[:8]}; "
                             f"the first: {data[at:at + 40]!r}")

    def assertPlaintext(self, db=None):
        records, _ = self.state(db)
        for kid, (blob, _) in records.items():
            self.assertTrue(blob.startswith(PEM_HEADER),
                            f"kid {kid} should be plaintext PEM: {blob[:16]!r}")
        return records

    # -- HTTP

    def token_kid(self, token):
        return jwt.get_unverified_header(token)["kid"]

    def verify(self, jwks, token, what="token"):
        """Verify token with PyJWT against the key set jwks."""
        kid = self.token_kid(token)
        key = jwk_for_kid(jwks, kid)
        self.assertIsNotNone(key, f"{what}: kid {kid} is not in the JWKS {jwks_kids(jwks)}")
        try:
            return jwt.decode(token, key.key, algorithms=["RS256"],
                              options={"require": ["exp", "iat"]},
                              leeway=CLOCK_SLACK)
        except jwt.PyJWTError as exc:
            self.failure(f"{what} (kid {kid}) does not verify: {exc!r}")

    def expired_status(self, server):
        return self.request(server, "POST", "/auth?expired=true").status


# ------------------------------------------------------------------ encryption

class EncryptionTests(KeysTestCase):

    def check_sealed_store(self, *server_args, keys_args=()):
        """Start, issue, rotate with the keys command, and check that nothing
        in the store is PEM and every token verifies with the served JWKS."""
        server = self.start_server(*server_args)
        self.assertNotIn("stored unencrypted", server.stderr_text(),
                         "a secret is set: no plaintext warning")
        _, token = self.post_auth(server)
        _, expired = self.post_auth(server, "expired=true")
        before = set(jwks_kids(self.get_jwks(server)))
        res = self.keys_ok("rotate", *keys_args)
        new = self.wait_for("the rotated key in the JWKS", lambda: set(
            jwks_kids(self.get_jwks(server))) - before)
        self.assertEqual(len(new), 1, new)
        self.assertIn(f"key {next(iter(new))}", res.stdout, res.describe())

        records = self.assertNoPem(what="after start and rotation")
        self.assertGreaterEqual(len(records), 3, records.keys())
        listed = self.key_list(*keys_args)
        self.assertEqual(set(listed), set(records))
        for kid, entry in listed.items():
            self.assertIs(entry["encrypted"], True, f"keys list: {entry}")
            self.assertEqual(entry["alg"], "RS256", f"keys list: {entry}")

        jwks = self.get_jwks(server)
        self.verify(jwks, token, "token issued before the rotation")
        self.verify(jwks, self.post_auth(server)[1], "token issued after the rotation")
        self.assertIn(self.token_kid(expired), records, "the expired key is kept")
        self.stop_server(server)
        # And after a restart on the sealed store.
        again = self.start_server(*server_args, label="again")
        self.verify(self.get_jwks(again), token, "token after a restart")
        self.assertNoPem(what="after a restart")

    def test_env_secret_keeps_no_pem_in_the_store_and_tokens_verify(self):
        self.set_secret("correct horse battery staple, but longer: 9f3c0a")
        self.check_sealed_store()

    def test_kek_file_keeps_no_pem_in_the_store_and_tokens_verify(self):
        kek = self.kek_file("kek", "a secret from a file 1b7e55")
        self.check_sealed_store("--kek-file", str(kek),
                                keys_args=("--kek-file", str(kek)))

    def test_kek_file_others_may_read_is_refused(self):
        kek = self.kek_file("kek", "a secret from a file", mode=0o644)
        res = self.run_server_to_exit("--kek-file", str(kek))
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn(str(kek), res.stderr, res.describe())
        self.assertFalse(self.store_path().exists(), "no store without a usable secret")

    def test_secret_in_both_env_and_file_is_refused(self):
        self.set_secret("one")
        kek = self.kek_file("kek", "two")
        res = self.run_server_to_exit("--kek-file", str(kek))
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn(SECRET_ENV, res.stderr, res.describe())

    def make_sealed_store(self, *args, token=False):
        """A store made by a server with the current secret, stopped."""
        server = self.start_server(*args, label="maker")
        out = self.post_auth(server)[1] if token else None
        self.post_auth(server, "expired=true")
        self.stop_server(server)
        self.assertNoPem(what="the sealed store")
        return out

    def test_wrong_secret_exits_1_and_leaves_the_store_unchanged(self):
        self.set_secret("the right secret 5d21")
        self.make_sealed_store()
        before = self.fingerprint()

        self.set_secret("the wrong secret 5d21")
        res = self.run_server_to_exit()
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn("wrong secret", res.stderr, res.describe())
        self.assertIn(store_display(self.store_path()), res.stderr, res.describe())
        self.assertEqual(self.fingerprint(), before, "the store changed")

        # The commands that need the private keys refuse too, and change nothing.
        for command in ("rotate", "export-public"):
            res = self.keys(command)
            self.assertEqual(res.returncode, 1, f"keys {command}: {res.describe()}")
            self.assertIn("wrong secret", res.stderr, res.describe())
            self.assertEqual(res.stdout, "", f"keys {command}: {res.describe()}")
        self.assertEqual(self.fingerprint(), before, "keys commands changed the store")

        kek = self.kek_file("wrong.kek", "yet another secret")
        self.set_secret(None)
        res = self.run_server_to_exit("--kek-file", str(kek))
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertEqual(self.fingerprint(), before, "the store changed")

    def test_missing_secret_on_a_sealed_store_exits_1(self):
        self.set_secret("the secret 77aa")
        self.make_sealed_store()
        before = self.fingerprint()
        self.set_secret(None)
        res = self.run_server_to_exit()
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn(SECRET_ENV, res.stderr, res.describe())
        self.assertIn("encrypted", res.stderr, res.describe())
        for command in ("rotate", "export-public"):
            res = self.keys(command)
            self.assertEqual(res.returncode, 1, f"keys {command}: {res.describe()}")
        self.assertEqual(self.fingerprint(), before, "the store changed")

    def swap_blob(self, src_kid, dst_kid):
        """Put the sealed blob of src_kid into the row of dst_kid (for LMDB:
        in a SQLite copy, copied back into a fresh LMDB store)."""
        db = self.store_path()
        if isinstance(db, PgStore):
            db.psql(f"UPDATE keys SET key = (SELECT key FROM keys WHERE kid = {int(src_kid)}) "
                    f"WHERE kid = {int(dst_kid)}")
            return
        if BACKEND == "sqlite":
            with sqlite3.connect(db) as con:
                con.execute("UPDATE keys SET key=(SELECT key FROM keys WHERE kid=?) "
                            "WHERE kid=?", (src_kid, dst_kid))
            con.close()
            return
        work = self.lmdb_as_sqlite(db)
        with sqlite3.connect(work) as con:
            con.execute("UPDATE keys SET key=(SELECT key FROM keys WHERE kid=?) "
                        "WHERE kid=?", (src_kid, dst_kid))
        con.close()
        for path in (db, Path(f"{db}-lock")):
            path.unlink(missing_ok=True)
        res = run_jwksd(["copy", "--from", f"sqlite:{work}", "--to", f"lmdb:{db}"],
                        cwd=self.tmp, timeout=30)
        self.assertEqual(res.returncode, 0, res.describe())

    def sealed_kids(self):
        """(signing kid, expired kid) of a fresh sealed store."""
        listed = self.key_list()
        active = [k for k, e in listed.items() if e["state"] == "active"]
        expired = [k for k, e in listed.items() if e["state"] == "expired"]
        self.assertEqual((len(active), len(expired)), (1, 1), listed)
        return active[0], expired[0]

    def test_blob_moved_into_the_expired_row_is_refused(self):
        self.set_secret("the secret 31f0")
        self.make_sealed_store()
        active, expired = self.sealed_kids()
        self.swap_blob(active, expired)
        records, _ = self.state()
        self.assertEqual(records[active][0], records[expired][0])

        server = self.start_server()
        self.assertIn(active, jwks_kids(self.get_jwks(server)))
        self.assertEqual(self.expired_status(server), 404,
                         f"kid {expired} holds kid {active}'s blob: it must not sign")
        self.verify(self.get_jwks(server), self.post_auth(server)[1])
        self.assertTrue(any(f"key {expired} " in line and "skipped" in line
                            for line in server.stderr_lines()),
                        f"no log line says key {expired} was skipped")

    def test_blob_moved_into_the_signing_row_is_refused(self):
        self.set_secret("the secret 31f1")
        self.make_sealed_store()
        active, expired = self.sealed_kids()
        self.swap_blob(expired, active)

        server = self.start_server()
        jwks = self.get_jwks(server)
        self.assertNotIn(active, jwks_kids(jwks),
                         f"kid {active} holds kid {expired}'s blob: it must not be published")
        _, token = self.post_auth(server)
        self.assertNotIn(self.token_kid(token), (active, expired))
        self.verify(jwks, token)
        self.assertTrue(any(f"key {active} " in line and "skipped" in line
                            for line in server.stderr_lines()),
                        f"no log line says key {active} was skipped")
        # The moved row is left in place, and the new key is sealed too.
        records, _ = self.state()
        self.assertIn(active, records)
        self.stop_server(server)
        self.assertNoPem(what="after the new key")

    def test_plaintext_store_is_encrypted_once_at_start(self):
        first = self.start_server(label="plain")
        _, token = self.post_auth(first)
        _, expired = self.post_auth(first, "expired=true")
        kids = jwks_kids(self.get_jwks(first))
        self.stop_server(first)
        self.assertIn("stored unencrypted", first.stderr_text())
        plain = self.assertPlaintext()
        self.assertEqual(len(plain), 2, plain.keys())

        self.set_secret("the migration secret 0c4d")
        second = self.start_server(label="sealed")
        self.assertRegex(second.stderr_text(), r"encrypted 2 plaintext keys",
                         "the migration logs its count")
        self.assertEqual(jwks_kids(self.get_jwks(second)), kids, "the same kids")
        self.verify(self.get_jwks(second), token, "a token issued before the migration")
        _, expired2 = self.post_auth(second, "expired=true")
        self.assertEqual(self.token_kid(expired2), self.token_kid(expired))
        self.stop_server(second)
        sealed = self.assertNoPem(what="after the migration", raw=False)
        self.assertEqual({k: exp for k, (_, exp) in sealed.items()},
                         {k: exp for k, (_, exp) in plain.items()},
                         "the same kids and expiries")

        third = self.start_server(label="again")
        self.assertNotIn("plaintext keys", third.stderr_text(),
                         "nothing left to encrypt on the next start")
        self.verify(self.get_jwks(third), token)
        self.stop_server(third)

        self.set_secret(None)
        res = self.run_server_to_exit()
        self.assertEqual(res.returncode, 1, res.describe())

    def test_plaintext_keys_are_gone_from_disk_after_the_migration(self):
        # The stored values are sealed (above); the plaintext keys must not
        # stay readable in the store's files either (free pages, a WAL).
        first = self.start_server(label="plain")
        self.post_auth(first)
        self.post_auth(first, "expired=true")
        self.stop_server(first)
        self.assertPlaintext()
        self.set_secret("the migration secret 0c4e")
        second = self.start_server(label="sealed")
        self.assertRegex(second.stderr_text(), r"encrypted 2 plaintext keys")
        self.post_auth(second)
        self.stop_server(second)
        self.assertNoPem(what="after the migration", raw=False)
        self.assertNoPemOnDisk(self.store_path(), "after the migration")

    def test_rewrap_moves_the_store_to_the_new_secret(self):
        old = self.kek_file("old.kek", "the old secret a1")
        new = self.kek_file("new.kek", "the new secret b2")
        server = self.start_server("--kek-file", str(old), label="old")
        _, token = self.post_auth(server)
        kids = jwks_kids(self.get_jwks(server))
        self.stop_server(server)
        before, _ = self.state()

        res = self.keys_ok("rewrap", "--old-kek-file", str(old), "--new-kek-file", str(new))
        self.assertIn(f"re-encrypted {len(before)} keys", res.stdout, res.describe())
        after = self.assertNoPem(what="after rewrap")
        self.assertEqual(set(after), set(before))
        for kid in before:
            self.assertNotEqual(after[kid][0], before[kid][0], f"kid {kid} was not re-sealed")
            self.assertEqual(after[kid][1], before[kid][1], f"kid {kid} exp changed")

        res = self.run_server_to_exit("--kek-file", str(old))
        self.assertEqual(res.returncode, 1, f"the old secret must fail:\n{res.describe()}")
        server = self.start_server("--kek-file", str(new), label="new")
        self.assertEqual(jwks_kids(self.get_jwks(server)), kids)
        self.verify(self.get_jwks(server), token, "a token issued before the rewrap")
        self.post_auth(server, "expired=true")

    def test_rewrap_with_a_wrong_old_secret_changes_nothing(self):
        right = self.kek_file("right.kek", "the right secret c3")
        wrong = self.kek_file("wrong.kek", "not the secret c3")
        new = self.kek_file("new.kek", "the new secret c3")
        server = self.start_server("--kek-file", str(right), label="maker")
        _, token = self.post_auth(server)
        self.stop_server(server)
        before = self.fingerprint()

        res = self.keys("rewrap", "--old-kek-file", str(wrong), "--new-kek-file", str(new))
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn("nothing changed", res.stderr, res.describe())
        self.assertEqual(self.fingerprint(), before, "a failed rewrap changed the store")

        res = self.run_server_to_exit("--kek-file", str(new))
        self.assertEqual(res.returncode, 1, res.describe())
        server = self.start_server("--kek-file", str(right), label="right")
        self.verify(self.get_jwks(server), token)


# --------------------------------------------------------- key administration

class KeysCommandTests(KeysTestCase):
    """The keys commands on a store a server is running on."""

    def start(self, *args):
        server = self.start_server(*args)
        _, token = self.post_auth(server)
        return server, token

    def test_list_json_shows_the_active_and_the_expired_key(self):
        server, token = self.start()
        self.post_auth(server, "expired=true")
        now = time.time()
        listed = self.key_list()
        (served,) = jwks_kids(self.get_jwks(server))
        self.assertEqual(self.token_kid(token), served)
        self.assertEqual(len(listed), 2, listed)
        entry = listed[served]
        self.assertEqual(entry["state"], "active", entry)
        self.assertEqual(entry["alg"], "RS256", entry)
        self.assertIs(entry["encrypted"], False, entry)
        self.assertNotIn("revoked_at", entry)
        for name in ("created", "activate_at", "retire_at", "exp"):
            self.assertIs(type(entry[name]), int, entry)
        self.assertLessEqual(entry["created"], now + CLOCK_SLACK, entry)
        self.assertLessEqual(entry["activate_at"], now + CLOCK_SLACK, entry)
        self.assertLess(now, entry["retire_at"], entry)
        self.assertLess(entry["retire_at"], entry["exp"], entry)
        claims = split_jwt(token)[1]
        self.assertLessEqual(claims["exp"], entry["exp"], (claims, entry))
        (other,) = set(listed) - {served}
        self.assertEqual(listed[other]["state"], "expired", listed[other])
        self.assertLess(listed[other]["exp"], now, listed[other])

        res = self.keys_ok("list")
        self.assertIn("KID", res.stdout, res.describe())
        self.assertIn("active", res.stdout, res.describe())

    def test_rotate_publishes_the_new_key_before_it_signs(self):
        server, token = self.start()
        old = self.token_kid(token)
        res = self.keys_ok("rotate")
        listed = self.key_list()
        pending = [k for k, e in listed.items() if e["state"] == "pending"]
        self.assertEqual(len(pending), 1, listed)
        new = pending[0]
        self.assertIn(f"key {new} published", res.stdout, res.describe())
        self.assertGreater(int(new), int(old), "kids only grow")
        entry = listed[new]
        self.assertGreaterEqual(entry["activate_at"] - entry["created"],
                                DEFAULT_MAX_AGE + DEFAULT_MARGIN,
                                f"published at least max-age + margin before it signs: {entry}")
        self.assertIs(entry["encrypted"], False, entry)

        self.wait_for(f"key {new} in the JWKS",
                                lambda: new in jwks_kids(self.get_jwks(server)))
        jwks = self.get_jwks(server)
        self.assertEqual(sorted(jwks_kids(jwks), key=int), sorted([old, new], key=int))
        for _ in range(5):
            _, token = self.post_auth(server)
            self.assertEqual(self.token_kid(token), old,
                             f"key {new} is pending: key {old} still signs")
            self.verify(jwks, token)
        # The old key now retires when the new one activates.
        self.assertEqual(self.key_list()[old]["retire_at"], entry["activate_at"])

    def test_second_rotate_keeps_the_waiting_key(self):
        server, _ = self.start()
        self.keys_ok("rotate")
        before = self.key_list()
        res = self.keys_ok("rotate")
        self.assertIn("already", res.stdout, res.describe())
        self.assertEqual(self.key_list(), before, "a second rotation changed nothing")

    def revoke_and_check(self, server, kid, signs_next=None):
        res = self.keys_ok("revoke", kid)
        self.assertIn(kid, res.stdout + res.stderr, res.describe())
        self.wait_for(f"key {kid} out of the JWKS",
                                lambda: kid not in jwks_kids(self.get_jwks(server)))

        def signs_with_another():
            resp = self.request(server, "POST", "/auth")
            if resp.status != 200:
                return None
            return resp.json()["token"]
        token = self.wait_for("a token from another key", signs_with_another,
                              timeout=KEYGEN_NOTICE)
        for _ in range(5):
            jwks = self.get_jwks(server)
            self.assertNotIn(kid, jwks_kids(jwks))
            got = self.token_kid(token)
            self.assertNotEqual(got, kid, f"revoked key {kid} signed a token")
            if signs_next is not None:
                self.assertEqual(got, signs_next)
            self.verify(jwks, token, "a token after the revocation")
            token = self.post_auth(server)[1]
        self.wait_for(f"the server logging the revocation of key {kid}", lambda: any(
            f"key {kid} revoked" in line for line in server.stderr_lines()))
        entry = self.key_list()[kid]
        self.assertEqual(entry["state"], "revoked", entry)
        self.assertIn("revoked_at", entry)
        self.assertLessEqual(abs(entry["revoked_at"] - time.time()), 5 + CLOCK_SLACK)

        again = self.keys_ok("revoke", kid)
        self.assertIn("already", again.stdout, again.describe())

    def test_revoke_the_active_key(self):
        server, token = self.start()
        self.revoke_and_check(server, self.token_kid(token))

    def test_revoke_the_active_key_while_a_successor_waits(self):
        server, token = self.start()
        self.keys_ok("rotate")
        (pending,) = [k for k, e in self.key_list().items() if e["state"] == "pending"]
        self.wait_for(f"key {pending} in the JWKS",
                      lambda: pending in jwks_kids(self.get_jwks(server)))
        self.revoke_and_check(server, self.token_kid(token), signs_next=pending)

    def test_revoke_unknown_kid_exits_1(self):
        server, _ = self.start()
        before = self.key_list()
        res = self.keys("revoke", "999")
        self.assertEqual(res.returncode, 1, res.describe())
        self.assertIn("no such key", res.stderr, res.describe())
        res = self.keys("revoke", "not-a-kid")
        self.assertEqual(res.returncode, 2, res.describe())
        self.assertEqual(self.key_list(), before)

    def test_export_public_equals_the_served_jwks(self):
        server, _ = self.start()
        for step in ("fresh", "after a rotation"):
            if step != "fresh":
                self.keys_ok("rotate")
                self.wait_for("the new key in the JWKS",
                              lambda: len(jwks_kids(self.get_jwks(server))) == 2)
            res = self.keys_ok("export-public")
            served = self.request(server, "GET", "/.well-known/jwks.json").body
            self.assertEqual(json.loads(res.stdout), json.loads(served), step)
            self.assertEqual(res.stdout.rstrip("\n").encode(), served, step)
            for jwk in json.loads(res.stdout)["keys"]:
                self.assertNotIn("d", jwk)

    def test_purge_removes_only_expired_keys(self):
        server, token = self.start()
        self.keys_ok("rotate")
        self.wait_for("the new key in the JWKS",
                      lambda: len(jwks_kids(self.get_jwks(server))) == 2)
        _, expired = self.post_auth(server, "expired=true")
        expired_kid = self.token_kid(expired)
        before = self.key_list()
        self.assertEqual(before[expired_kid]["state"], "expired")
        jwks_before = self.get_jwks(server)

        # The expired key expired an hour ago: not older than two hours.
        res = self.keys_ok("purge", "--older-than", "2h")
        self.assertIn("purged 0 keys", res.stdout, res.describe())
        self.assertEqual(self.key_list(), before)

        res = self.keys_ok("purge", "--older-than", "0s")
        self.assertIn("purged 1 keys", res.stdout, res.describe())
        after = self.key_list()
        self.assertEqual(set(after), set(before) - {expired_kid},
                         "only the expired key is purged")
        self.wait_for("?expired=true answering 404 after the purge",
                      lambda: self.expired_status(server) == 404)
        self.assertEqual(self.get_jwks(server), jwks_before, "the JWKS is unchanged")
        self.verify(self.get_jwks(server), token)
        self.verify(self.get_jwks(server), self.post_auth(server)[1])
        res = self.keys_ok("purge", "--older-than", "0s")
        self.assertIn("purged 0 keys", res.stdout, res.describe())

    @file_backends_only("a missing directory and a garbage file "
                        "(postgres: test_faults.UnreachableDatabaseTests)")
    def test_store_that_cannot_be_opened_exits_1_with_a_clear_message(self):
        missing = self.tmp / "missing" / STORE_NAME
        garbage = self.tmp / ("garbage-" + STORE_NAME)
        garbage.write_bytes(b"this is not a key store\n" * 512)
        for db in (missing, garbage):
            for command, *args in (("list",), ("list", "--json"), ("rotate",),
                                   ("revoke", "1"), ("export-public",),
                                   ("purge", "--older-than", "0s")):
                res = self.keys(command, *args, db=db)
                what = f"keys {command} on {db.name}"
                self.assertEqual(res.returncode, 1, f"{what}: {res.describe()}")
                self.assertIn(str(db), res.stderr, f"{what}: {res.describe()}")
                self.assertEqual(len(res.stderr.strip().splitlines()), 1,
                                 f"{what}: one line: {res.describe()}")
                self.assertEqual(res.stdout, "", f"{what}: {res.describe()}")
        self.assertFalse(missing.parent.exists(), "the missing directory was created")
        self.assertEqual(garbage.read_bytes(), b"this is not a key store\n" * 512)


if __name__ == "__main__":
    import unittest
    unittest.main()
