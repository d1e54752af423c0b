"""TLS on jwksd's listeners: --tls-cert/--tls-key, --admin-tls-cert/--admin-tls-key.

Run once, on SQLite: TLS does not depend on the backend.

Each test makes its own certificate authority and server certificates with
the cryptography package, and talks to the real jwksd with Python's ssl
module, verifying the chain against that authority: a token from POST
/auth verifies (PyJWT) with the JWKS fetched over TLS; TLS 1.2 negotiates an
ECDHE AEAD cipher and TLS 1.3 is the default; TLS 1.0 and 1.1, CBC or RSA
key exchange, and plain HTTP on the TLS port are refused cleanly (the
server keeps serving); SIGHUP after the files are replaced makes new
connections see the new certificate while a kept-alive connection opened
before keeps working, and bad files on SIGHUP keep the old pair; bad files
at start (a key open to others, a key of another certificate, no
certificate, an encrypted key) stop jwksd with exit 1 and one line; the
admin listener uses its own pair.

Where a refusal is asserted, the same client is first shown to succeed
against a permissive TLS server of the test's own (Python's ssl), so that
the refusal is jwksd's, not a client that never offered the protocol.

The only time bounds are hang guards, never speed targets.
"""

import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from harness import (
    AUTH_PATH, HTTP_TIMEOUT, JWKS_PATH, LOOPBACK, JwksdTestCase, can_connect,
    db_args, free_port, jwk_for_kid, raw_exchange, run_jwksd,
)

WAIT = 20.0  # hang guard for what the server does after a signal

# What Mozilla's intermediate configuration allows for TLS 1.2.
ECDHE_AEAD_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}
# CBC ciphers and ciphers with RSA key exchange, which it leaves out.
WEAK_TLS12 = ("AES128-SHA:AES256-SHA:AES128-SHA256:AES128-GCM-SHA256:"
              "AES256-GCM-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
              "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384")

RELOADED = "jwksd: TLS on the public listener reloaded: "
RELOAD_FAILED = "jwksd: TLS reload on the public listener failed"
ADMIN_RELOADED = "jwksd: TLS on the admin listener reloaded: "


def wait_for(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting ({timeout} s) for {what}")


# ----------------------------------------------------------------- the PKI

class Pki:
    """A test certificate authority (ECDSA P-256) that issues server
    certificates for 127.0.0.1 and localhost."""

    def __init__(self, directory, name="jwksd test CA", parent=None):
        """A root CA (written as ca.pem), or with parent an intermediate
        CA signed by it (not written: it goes into the certificate file)."""
        self.dir = directory
        self.parent = parent
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer = parent.cert.subject if parent else subject
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(
                ca=True, path_length=0 if parent else 1), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(parent.key if parent else self.key, hashes.SHA256()))
        root = self
        while root.parent:
            root = root.parent
        self.ca_path = root.dir / "ca.pem"
        if not parent:
            self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name, serial, key_type="ec"):
        """(certificate PEM, unencrypted PKCS#8 key PEM) for a new key; the
        certificate PEM of an intermediate CA's is followed by its own."""
        if key_type == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256()))
        chain = b""
        ca = self
        while ca.parent:
            chain += ca.cert.public_bytes(serialization.Encoding.PEM)
            ca = ca.parent
        return (cert.public_bytes(serialization.Encoding.PEM) + chain,
                key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    def write(self, name, cert_pem, key_pem, key_mode=0o600):
        """Write a pair as name.pem and name.key (each replaced atomically,
        the way a certificate renewal tool does); returns the two paths."""
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        for path, data, mode in ((cert_path, cert_pem, 0o644),
                                 (key_path, key_pem, key_mode)):
            tmp = path.with_name(path.name + ".new")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        return cert_path, key_path

    def client_context(self, minimum=None, maximum=None, ciphers=None):
        """A client context that verifies the chain and the address against
        this CA only."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if ciphers:
                ctx.set_ciphers(ciphers)
            if minimum:
                ctx.minimum_version = minimum
            if maximum:
                ctx.maximum_version = maximum
        return ctx


def serial_of(sock):
    """The serial number of the certificate the peer of sock presented."""
    der = sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


class Https:
    """One HTTPS connection (kept alive between requests)."""

    def __init__(self, port, ctx, timeout=HTTP_TIMEOUT):
        self.conn = http.client.HTTPSConnection(LOOPBACK, port, context=ctx,
                                                timeout=timeout)
        self.conn.connect()
        self.sock = self.conn.sock

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body); the connection must stay the same one."""
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheaders(), data

    def close(self):
        self.conn.close()


def permissive_handshake(pki, client_ctx, minimum, maximum, ciphers):
    """Handshake client_ctx with a TLS server of our own that allows
    minimum..maximum and ciphers; returns (version, cipher) or raises the
    client's ssl.SSLError."""
    cert_pem, key_pem = pki.issue("permissive", 7, key_type="rsa")
    cert_path, key_path = pki.write("permissive", cert_pem, key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.set_ciphers(ciphers)
        server_ctx.minimum_version = minimum
        server_ctx.maximum_version = maximum
    server_ctx.load_cert_chain(cert_path, key_path)
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve():
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
                return tls.version(), tls.cipher()[0]
    finally:
        thread.join(10)
        listener.close()


# ------------------------------------------------------------------ tests

class TlsTestCase(JwksdTestCase):

    def setUp(self):
        super().setUp()
        self.pki = Pki(self.tmp)

    def start_tls(self, *args, name="server", serial=1001, key_type="rsa"):
        """jwksd over TLS with a fresh pair: (server, cert path, key path)."""
        cert_path, key_path = self.pki.write(name, *self.pki.issue(
            f"jwksd {name}", serial, key_type))
        server = self.start_server("--tls-cert", cert_path, "--tls-key", key_path,
                                   *args)
        return server, cert_path, key_path

    def https(self, server_or_port, ctx=None):
        port = getattr(server_or_port, "port", server_or_port)
        try:
            return Https(port, ctx or self.pki.client_context())
        except (OSError, ssl.SSLError) as exc:
            self.failure(f"TLS connection to port {port} failed: {exc!r}")

    def get(self, server_or_port, path, ctx=None):
        """One request on a new TLS connection: (status, body, serial)."""
        conn = self.https(server_or_port, ctx)
        try:
            status, _, body = conn.request("GET", path)
            return status, body, serial_of(conn.sock)
        finally:
            conn.close()

    def assertRefused(self, port, ctx, what):
        """A handshake with ctx fails with an SSL error (not a hang, not a
        reset before any alert); returns the error."""
        with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLError, msg=what) as caught:
                with ctx.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
                    tls.sendall(b"GET " + JWKS_PATH.encode() + b" HTTP/1.1\r\n\r\n")
                    tls.recv(1)
        return caught.exception

    def assertStillServes(self, server):
        self.assertTrue(server.running, "jwksd exited")
        status, body, _ = self.get(server, JWKS_PATH)
        self.assertEqual(status, 200, body[:300])


class TlsServingTests(TlsTestCase):

    def test_token_verifies_with_the_jwks_fetched_over_tls(self):
        server, _, _ = self.start_tls(serial=4242)
        conn = self.https(server)
        try:
            status, headers, body = conn.request("POST", AUTH_PATH, body=b"")
            self.assertEqual(status, 200, body[:300])
            token = json.loads(body)["token"]
            status, _, body = conn.request("GET", JWKS_PATH)
            self.assertEqual(status, 200, body[:300])
            jwks = json.loads(body)
            self.assertEqual(serial_of(conn.sock), 4242)
            self.assertEqual(conn.sock.version(), "TLSv1.3",
                             "a client that offers TLS 1.3 gets it")
            self.assertIsNone(conn.sock.compression(), "no TLS compression")
        finally:
            conn.close()
        header = jwt.get_unverified_header(token)
        key = jwk_for_kid(jwks, header["kid"])
        self.assertIsNotNone(key, f"kid {header['kid']} not in {jwks}")
        claims = jwt.decode(token, key.key, algorithms=[header["alg"]],
                            options={"require": ["exp", "iat"]})
        self.assertGreater(claims["exp"], claims["iat"])

    def test_chain_with_an_intermediate_verifies_against_the_root(self):
        intermediate = Pki(self.tmp, "jwksd test intermediate", parent=self.pki)
        cert_pem, key_pem = intermediate.issue("jwksd chained", 7007)
        self.assertEqual(cert_pem.count(b"BEGIN CERTIFICATE"), 2)
        cert_path, key_path = self.pki.write("chained", cert_pem, key_pem)
        server = self.start_server("--tls-cert", cert_path, "--tls-key", key_path)
        status, _, serial = self.get(server, JWKS_PATH)
        self.assertEqual((status, serial), (200, 7007),
                         "the client trusts only the root: jwksd sent the intermediate")
        # Without the intermediate in the file, the same client cannot verify.
        leaf_only = cert_pem[:cert_pem.index(b"-----END CERTIFICATE-----") + 26]
        self.pki.write("chained", leaf_only, key_pem)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: RELOADED in server.stderr_text(), "the reload line")
        with socket.create_connection((LOOPBACK, server.port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLCertVerificationError):
                self.pki.client_context().wrap_socket(raw, server_hostname=LOOPBACK)

    def test_tls12_negotiates_an_ecdhe_aead_cipher(self):
        for key_type in ("rsa", "ec"):
            with self.subTest(key_type=key_type):
                server, _, _ = self.start_tls(name=f"tls12-{key_type}",
                                              key_type=key_type)
                ctx = self.pki.client_context(maximum=ssl.TLSVersion.TLSv1_2)
                conn = self.https(server, ctx)
                try:
                    status, _, _ = conn.request("GET", JWKS_PATH)
                    self.assertEqual(status, 200)
                    self.assertEqual(conn.sock.version(), "TLSv1.2")
                    self.assertIn(conn.sock.cipher()[0], ECDHE_AEAD_TLS12)
                    self.assertIsNone(conn.sock.compression())
                finally:
                    conn.close()
                self.stop_server(server)

    def test_cbc_and_rsa_key_exchange_are_refused(self):
        server, _, _ = self.start_tls()
        for cipher in WEAK_TLS12.split(":"):
            with self.subTest(cipher=cipher):
                ctx = self.pki.client_context(maximum=ssl.TLSVersion.TLSv1_2,
                                              ciphers=cipher)
                version, got = permissive_handshake(
                    self.pki, ctx, ssl.TLSVersion.TLSv1_2,
                    ssl.TLSVersion.TLSv1_2, cipher)
                self.assertEqual((version, got), ("TLSv1.2", cipher),
                                 "the client offers the cipher")
                self.assertRefused(server.port, ctx, f"{cipher} refused")
        self.assertStillServes(server)

    def test_tls10_and_tls11_are_refused(self):
        server, _, _ = self.start_tls()
        for version, name in ((ssl.TLSVersion.TLSv1, "TLSv1"),
                              (ssl.TLSVersion.TLSv1_1, "TLSv1.1")):
            with self.subTest(version=name):
                ctx = self.pki.client_context(minimum=version, maximum=version,
                                              ciphers="DEFAULT:@SECLEVEL=0")
                try:
                    got, _ = permissive_handshake(self.pki, ctx, version, version,
                                                  "DEFAULT:@SECLEVEL=0")
                except ssl.SSLError as exc:
                    self.skipTest(f"this OpenSSL does not speak {name} even at "
                                  f"SECLEVEL=0 ({exc}); only TLS 1.2 and 1.3 "
                                  f"are tested")
                self.assertEqual(got, name, "the client offers only this version")
                exc = self.assertRefused(server.port, ctx, f"{name} refused")
                self.assertIn("PROTOCOL_VERSION", exc.reason or str(exc),
                              f"a protocol_version alert, not another failure: {exc!r}")
        self.assertStillServes(server)

    def test_tls12_renegotiation_is_refused(self):
        openssl = shutil.which("openssl")
        if not openssl:
            self.skipTest("the openssl command is not installed")
        server, _, _ = self.start_tls()
        # s_client renegotiates when it reads "R" on a line of its own.
        # (OpenSSL 3 servers refuse client renegotiation unless told to
        # allow it; jwksd also sets SSL_OP_NO_RENEGOTIATION. This pins the
        # behaviour, whichever of the two provides it.)
        proc = subprocess.Popen(
            [openssl, "s_client", "-connect", f"{LOOPBACK}:{server.port}",
             "-tls1_2", "-CAfile", str(self.pki.ca_path), "-verify_return_error"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        output = b""
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + WAIT
        while b"no renegotiation" not in output and time.monotonic() < deadline:
            chunk = proc.stdout.read()
            if chunk:
                output += chunk
            elif proc.poll() is not None:
                break
            time.sleep(0.02)
        text = output.decode("latin-1")
        self.assertIn("Verify return code: 0 (ok)", text)
        self.assertIn("RENEGOTIATING", text, "the client asked")
        self.assertIn("no renegotiation", text, "the server refused")
        self.assertStillServes(server)

    def test_plain_http_on_the_tls_port_is_refused(self):
        server, _, _ = self.start_tls()
        request = (f"GET {JWKS_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n").encode()
        for attempt in range(3):
            data, closed = raw_exchange(server.port, request, timeout=10)
            self.assertTrue(closed, "the server closes the connection")
            self.assertFalse(data.startswith(b"HTTP/"), f"no HTTP answer: {data[:100]!r}")
            self.assertTrue(data == b"" or data[:1] == b"\x15",
                            f"nothing, or a TLS alert record: {data[:100]!r}")
        self.assertStillServes(server)

    def test_admin_listener_uses_its_own_pair(self):
        admin_cert, admin_key = self.pki.write("admin", *self.pki.issue(
            "jwksd admin", 5005))
        admin_port = free_port()
        server, _, _ = self.start_tls(
            "--admin-listen", f"{LOOPBACK}:{admin_port}",
            "--admin-tls-cert", admin_cert, "--admin-tls-key", admin_key,
            serial=6006)
        wait_for(lambda: can_connect(admin_port), "the admin listener")
        status, body, serial = self.get(admin_port, "/metrics")
        self.assertEqual(status, 200, body[:300])
        self.assertIn(b"# TYPE", body)
        self.assertEqual(serial, 5005, "the admin listener's own certificate")
        status, _, serial = self.get(server, JWKS_PATH)
        self.assertEqual((status, serial), (200, 6006))
        data, closed = raw_exchange(
            admin_port, f"GET /metrics HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode(),
            timeout=10)
        self.assertTrue(closed and not data.startswith(b"HTTP/"),
                        f"plain HTTP on the admin TLS port: {data[:100]!r}")
        # SIGHUP reloads the admin pair too.
        self.pki.write("admin", *self.pki.issue("jwksd admin 2", 5006))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ADMIN_RELOADED in server.stderr_text(), "the admin reload line")
        status, _, serial = self.get(admin_port, "/metrics")
        self.assertEqual((status, serial), (200, 5006))

    def test_admin_tls_alone_leaves_the_public_listener_plain(self):
        admin_cert, admin_key = self.pki.write("admin", *self.pki.issue(
            "jwksd admin", 5005))
        admin_port = free_port()
        server = self.start_server("--admin-listen", f"{LOOPBACK}:{admin_port}",
                                   "--admin-tls-cert", admin_cert,
                                   "--admin-tls-key", admin_key)
        wait_for(lambda: can_connect(admin_port), "the admin listener")
        self.assertEqual(self.request(server, "GET", JWKS_PATH).status, 200)
        status, _, serial = self.get(admin_port, "/metrics")
        self.assertEqual((status, serial), (200, 5005))


class TlsReloadTests(TlsTestCase):

    def test_sighup_new_connections_see_the_new_pair(self):
        # Idle kept-alive connections stay open for the whole test.
        server, cert_path, key_path = self.start_tls(
            "--request-timeout", "120000", name="server", serial=1001)
        old = self.https(server)
        self.addCleanup(old.close)
        status, _, _ = old.request("GET", JWKS_PATH)
        self.assertEqual(status, 200)
        self.assertEqual(serial_of(old.sock), 1001)

        # Renewal: a new key, subject and serial, same file names.
        self.pki.write("server", *self.pki.issue("jwksd renewed", 2002, "ec"))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: RELOADED in server.stderr_text(), "the reload line")
        self.assertIn("CN=jwksd renewed", server.stderr_text())

        status, _, serial = self.get(server, JWKS_PATH)
        self.assertEqual((status, serial), (200, 2002), "a new connection")
        status, _, body = old.request("GET", JWKS_PATH)
        self.assertEqual(status, 200, body[:300])
        self.assertIs(old.conn.sock, old.sock,
                      "the connection opened before the reload is still the same one")
        self.assertEqual(serial_of(old.sock), 1001)

    def test_bad_files_on_sighup_keep_the_old_pair(self):
        server, cert_path, key_path = self.start_tls(serial=1001)
        good_cert, good_key = self.pki.issue("jwksd third", 3003)
        cases = [
            ("a certificate file that is not PEM",
             b"not a certificate\n", good_key, 0o600, "holds no PEM certificate"),
            ("a key of another certificate",
             good_cert, self.pki.issue("other", 9)[1], 0o600, "does not belong"),
            ("a key file open to others",
             good_cert, good_key, 0o644, "open to group or others (mode 644)"),
        ]
        for number, (what, cert_pem, key_pem, mode, reason) in enumerate(cases, 1):
            with self.subTest(what):
                self.pki.write("server", cert_pem, key_pem, key_mode=mode)
                server.proc.send_signal(signal.SIGHUP)
                wait_for(lambda: server.stderr_text().count(RELOAD_FAILED) == number,
                         f"reload failure line {number}")
                line = [l for l in server.stderr_lines() if RELOAD_FAILED in l][-1]
                self.assertIn(reason, line)
                status, _, serial = self.get(server, JWKS_PATH)
                self.assertEqual((status, serial), (200, 1001), "the old pair serves")
        self.assertNotIn(RELOADED, server.stderr_text())
        # Fixed: the next SIGHUP takes the new pair.
        self.pki.write("server", good_cert, good_key)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: RELOADED in server.stderr_text(), "the reload line")
        status, _, serial = self.get(server, JWKS_PATH)
        self.assertEqual((status, serial), (200, 3003))


class TlsStartTests(TlsTestCase):

    def run_with(self, *args):
        port = free_port()
        result = run_jwksd(["--listen", f"{LOOPBACK}:{port}",
                            *db_args(self.store_path()),
                            *(str(a) for a in args)],
                           cwd=self.tmp, watch_port=port)
        return result

    def test_bad_files_stop_the_start(self):
        cert_pem, key_pem = self.pki.issue("jwksd", 1)
        encrypted = serialization.load_pem_private_key(key_pem, None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
        cases = [
            ("key file mode 0644", cert_pem, key_pem, 0o644,
             "is open to group or others (mode 644); chmod 600 it"),
            ("key file mode 0640", cert_pem, key_pem, 0o640,
             "is open to group or others (mode 640); chmod 600 it"),
            ("key of another certificate", cert_pem,
             self.pki.issue("other", 2)[1], 0o600, "does not belong to the certificate"),
            ("no certificate", b"-----BEGIN NOTHING-----\n", key_pem, 0o600,
             "holds no PEM certificate"),
            ("an encrypted key", cert_pem, encrypted, 0o600, "is encrypted"),
            ("no key", cert_pem, b"", 0o600, "holds no PEM private key"),
        ]
        for what, cert, key, mode, reason in cases:
            with self.subTest(what):
                cert_path, key_path = self.pki.write("bad", cert, key, key_mode=mode)
                result = self.run_with("--tls-cert", cert_path, "--tls-key", key_path)
                self.assertEqual(result.returncode, 1, result.describe())
                self.assertFalse(result.listened, "refused before listening")
                lines = result.stderr.splitlines()
                self.assertEqual(len(lines), 1, f"one line: {result.describe()}")
                self.assertTrue(lines[0].startswith("jwksd: --tls-cert/--tls-key: "),
                                result.describe())
                self.assertIn(reason, lines[0])
        with self.subTest("missing key file"):
            cert_path, _ = self.pki.write("ok", cert_pem, key_pem)
            result = self.run_with("--tls-cert", cert_path, "--tls-key",
                                   self.tmp / "absent.key")
            self.assertEqual(result.returncode, 1, result.describe())
            self.assertIn("absent.key", result.stderr)
        with self.subTest("admin key file mode 0644"):
            cert_path, key_path = self.pki.write("adm", cert_pem, key_pem, key_mode=0o644)
            result = self.run_with("--admin-listen", str(free_port()),
                                   "--admin-tls-cert", cert_path,
                                   "--admin-tls-key", key_path)
            self.assertEqual(result.returncode, 1, result.describe())
            self.assertIn("jwksd: --admin-tls-cert/--admin-tls-key: ", result.stderr)
            self.assertIn("open to group or others", result.stderr)

    def test_flags_of_a_pair_go_together(self):
        cert_path, key_path = self.pki.write("ok", *self.pki.issue("jwksd", 1))
        for args, message in [
                (["--tls-cert", cert_path], "--tls-cert and --tls-key go together"),
                (["--tls-key", key_path], "--tls-cert and --tls-key go together"),
                (["--admin-listen", "9", "--admin-tls-key", key_path],
                 "--admin-tls-cert and --admin-tls-key go together"),
                (["--admin-tls-cert", cert_path, "--admin-tls-key", key_path],
                 "--admin-tls-cert needs --admin-listen"),
                (["--tls-cert", "", "--tls-key", key_path], "empty --tls-cert")]:
            with self.subTest(args=args):
                result = self.run_with(*args)
                self.assertEqual(result.returncode, 2, result.describe())
                self.assertIn(message, result.stderr)
