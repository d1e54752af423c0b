"""Algorithms, claims and discovery (issue 11), on the backend from
KS_TEST_BACKEND.

Every token is checked by two implementations that are not jwksd's: PyJWT
(with the key PyJWK builds from the served JWK) and the `openssl` command
line (with a public key this file builds from the JWK's members through
cryptography, an ES256 signature turned into DER by a small encoder of our
own). A token verifies only if its header alg, the JWK's alg and the
algorithm asked for agree.

Keys are read from the store as the assignment's tools would: the SQLite
file directly, LMDB through `jwksd copy` of a scratch copy of its data
file into SQLite, PostgreSQL with psql. Keys written by another tool (a
P-384, an Ed448 and an RSA-1024 key) go in the same ways (LMDB: into the
SQLite copy, copied back into a fresh LMDB store). No secret is set, so
blobs are plain PEM.
"""

import base64
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from harness import (
    all_json_keys, as_bytes,
    AUTH_PATH, BACKEND, CLOCK_SLACK, HTTP_TIMEOUT, JWKS_PATH, LOOPBACK,
    JwksdTestCase, PgStore, Server, SharedServerTestCase, b64url_decode,
    free_port, header_of, jwks_kids, parse_raw_response, raw_exchange, run_jwksd,
    split_jwt, store_for,
)

ALGS = ("RS256", "PS256", "ES256", "EdDSA")
ALL_ALGS = ",".join(ALGS)
OIDC_PATH = "/.well-known/openid-configuration"
OAUTH_PATH = "/.well-known/oauth-authorization-server"
DISCOVERY_PATHS = (OIDC_PATH, OAUTH_PATH)
DISCOVERY_MEMBERS = {
    "issuer", "jwks_uri", "token_endpoint", "response_types_supported",
    "subject_types_supported", "id_token_signing_alg_values_supported",
    "token_endpoint_auth_methods_supported",
}
NOT_AVAILABLE = {"error": "algorithm not available"}
DEFAULT_TOKEN_TTL = 3600
SECRET_ENV = "NOT_MY_KEY"

# Every member a JWK may carry only for a private or symmetric key
# (RFC 7518 sections 6.2.2, 6.3.2, 6.4; RFC 8037 section 2).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})

# The exact members of a published key, by key type.
JWK_MEMBERS = {
    "RSA": frozenset({"kid", "kty", "use", "alg", "n", "e"}),
    "EC": frozenset({"kid", "kty", "use", "alg", "crv", "x", "y"}),
    "OKP": frozenset({"kid", "kty", "use", "alg", "crv", "x"}),
}
KTY = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}

PKCS1_HEADER = b"-----BEGIN RSA PRIVATE KEY-----"
PKCS8_HEADER = b"-----BEGIN PRIVATE KEY-----"
# DER of the algorithm OIDs a PKCS#8 blob names (tag, length, value).
OID_RSASSA_PSS = bytes.fromhex("06092a864886f70d01010a")   # 1.2.840.113549.1.1.10
OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")      # 1.2.840.10045.2.1
OID_PRIME256V1 = bytes.fromhex("06082a8648ce3d030107")       # 1.2.840.10045.3.1.7
OID_ED25519 = bytes.fromhex("06032b6570")                    # 1.3.101.112

JTI_RE = re.compile(r"\A[A-Za-z0-9_-]{22}\Z")
KID_RE = r"\A[1-9][0-9]*\Z"

# A running server shows a store change within a second; slack for a
# loaded machine. A change that needs a new RSA key first takes longer.
NOTICE = 3.0
# How long a server may take to make its first keys (a loaded machine).
READY_TIMEOUT = 120.0


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_by_kid(jwks, kid):
    """The JWK dict with this kid in a served key set, or None."""
    return next((k for k in jwks.get("keys", []) if k.get("kid") == kid), None)


def jwks_algs(jwks):
    """{kid: alg} of a served key set."""
    return {k.get("kid"): k.get("alg") for k in jwks.get("keys", [])}


def pem_body_der(pem):
    """The DER bytes of the first PEM block of pem."""
    text = as_bytes(pem).decode("ascii")
    lines = text.strip().splitlines()
    body = "".join(line for line in lines[1:] if not line.startswith("-----"))
    return base64.b64decode(body)


# ------------------------------------------------------------ DER for ES256

def der_length(n):
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def der_integer(unsigned_be):
    """A DER INTEGER of a non-negative big-endian byte string."""
    value = unsigned_be.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return b"\x02" + der_length(len(value)) + value


def ecdsa_raw_to_der(sig):
    """RFC 7518 section 3.4 R || S (64 bytes for P-256) as the DER
    ECDSA-Sig-Value SEQUENCE { r INTEGER, s INTEGER } OpenSSL reads."""
    if len(sig) != 64:
        raise ValueError(f"an ES256 signature is 64 bytes, got {len(sig)}")
    body = der_integer(sig[:32]) + der_integer(sig[32:])
    return b"\x30" + der_length(len(body)) + body


# ------------------------------------------------- public keys from JWKs

def public_key_from_jwk(jwk):
    """A cryptography public key built from the JWK's members by hand (not
    through PyJWT): RSA n/e, EC P-256 x/y (32 bytes each, checked on the
    curve by cryptography), OKP Ed25519 x (32 bytes)."""
    kty = jwk["kty"]
    if kty == "RSA":
        n = int.from_bytes(b64url_decode(jwk["n"]), "big")
        e = int.from_bytes(b64url_decode(jwk["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if kty == "EC":
        if jwk["crv"] != "P-256":
            raise ValueError(f"unexpected crv {jwk['crv']!r}")
        x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
        if len(x) != 32 or len(y) != 32:
            raise ValueError(f"P-256 x, y are 32 bytes: {len(x)}, {len(y)}")
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"),
            ec.SECP256R1()).public_key()
    if kty == "OKP":
        if jwk["crv"] != "Ed25519":
            raise ValueError(f"unexpected crv {jwk['crv']!r}")
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    raise ValueError(f"unexpected kty {kty!r}")


def spki_pem(public_key):
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_of_blob(blob):
    """The public key of a stored private key (plain PEM)."""
    private = serialization.load_pem_private_key(as_bytes(blob), password=None)
    return private.public_key()


def public_jwk_of_blob(blob, alg):
    """What the JWK of a stored private key must publish: its public
    members, computed here from the private key."""
    public = public_key_of_blob(blob)
    if isinstance(public, rsa.RSAPublicKey):
        nums = public.public_numbers()
        return {"kty": "RSA", "alg": alg,
                "n": b64url(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
                "e": b64url(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))}
    if isinstance(public, ec.EllipticCurvePublicKey):
        nums = public.public_numbers()
        return {"kty": "EC", "alg": alg, "crv": "P-256",
                "x": b64url(nums.x.to_bytes(32, "big")),
                "y": b64url(nums.y.to_bytes(32, "big"))}
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw,
                                  serialization.PublicFormat.Raw)
        return {"kty": "OKP", "alg": alg, "crv": "Ed25519", "x": b64url(raw)}
    raise ValueError(f"unexpected key type {type(public).__name__}")


# ------------------------------------------------------------ openssl CLI

def openssl_verify(alg, public_pem, signing_input, signature, workdir):
    """Verify a JWS signature with the openssl command line.

    Returns (verified, output). RS256: dgst -sha256; PS256: the same with
    PSS padding, MGF1-SHA256 and exactly 32 bytes of salt; ES256: R || S
    re-encoded as DER first; EdDSA: pkeyutl -rawin (Ed25519 signs the
    message itself, no digest).
    """
    work = Path(tempfile.mkdtemp(prefix="ossl-", dir=workdir))
    pub, data, sig = work / "pub.pem", work / "input.bin", work / "sig.bin"
    pub.write_bytes(public_pem)
    data.write_bytes(signing_input)
    if alg == "ES256":
        sig.write_bytes(ecdsa_raw_to_der(signature))
    else:
        sig.write_bytes(signature)
    if alg == "EdDSA":
        cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub),
               "-rawin", "-in", str(data), "-sigfile", str(sig)]
    else:
        cmd = ["openssl", "dgst", "-sha256", "-verify", str(pub),
               "-signature", str(sig)]
        if alg == "PS256":
            cmd += ["-sigopt", "rsa_padding_mode:pss",
                    "-sigopt", "rsa_pss_saltlen:32",
                    "-sigopt", "rsa_mgf1_md:sha256"]
        elif alg != "RS256" and alg != "ES256":
            raise ValueError(f"no openssl check for {alg!r}")
        cmd.append(str(data))
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=30)
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    shutil.rmtree(work, ignore_errors=True)
    return proc.returncode == 0, f"{' '.join(cmd[:3])} ...: exit {proc.returncode}: {output}"


def jws_parts(token):
    """(signing input bytes, signature bytes) of a compact JWS."""
    head, payload, sig = token.split(".")
    return f"{head}.{payload}".encode("ascii"), b64url_decode(sig)


# ------------------------------------------------------------ base class

def configured_algs(args):
    """The algorithms a jwksd command line configures (default RS256)."""
    args = [str(a) for a in args]
    for i, arg in enumerate(args[:-1]):
        if arg == "--alg":
            return tuple(args[i + 1].split(","))
    return ("RS256",)


def wait_until_ready(server, algs, timeout=READY_TIMEOUT):
    """Wait until the server publishes a key of every algorithm in algs.

    A first start makes a signing and an expired key per algorithm; on a
    loaded machine (RSA-4096 above all) that can take longer than a request
    waits for it (503). What is tested here comes after, so wait for it
    (the first-start latency is test_http's).
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not server.running:
            break
        try:
            resp = server.request("GET", JWKS_PATH)
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        else:
            last = resp.describe()
            if resp.status == 200:
                published = {k.get("alg") for k in resp.json().get("keys", [])}
                if set(algs) <= published:
                    return
        time.sleep(0.1)
    raise AssertionError(f"jwksd did not publish keys of {list(algs)} within "
                         f"{timeout} s; last answer: {last}{server.context()}")


def clear_secret(add_cleanup):
    """Unset $NOT_MY_KEY (restored by the cleanup given): the store keeps
    plain PEM that the tests read."""
    old = os.environ.pop(SECRET_ENV, None)
    if old is not None:
        add_cleanup(os.environ.__setitem__, SECRET_ENV, old)


class AlgChecks:
    """Checks shared by every test class here (a mixin for JwksdTestCase
    and SharedServerTestCase)."""

    wait_timeout = NOTICE
    keys_timeout = 120

    @classmethod
    def setUpClass(cls):
        clear_secret(cls.addClassCleanup)  # before a shared server starts
        super().setUpClass()
        if getattr(cls, "server", None) is not None:
            wait_until_ready(cls.server, configured_algs(cls.server_args))

    def start_server(self, *args, **kwargs):
        server = super().start_server(*args, **kwargs)
        wait_until_ready(server, configured_algs(args))
        return server

    def setUp(self):
        super().setUp()
        clear_secret(self.addCleanup)

    # -- tokens

    def token_for(self, server, alg=None, expired=False):
        """POST /auth, with ?alg= and ?expired=true as asked."""
        params = []
        if expired:
            params.append("expired=true")
        if alg is not None:
            params.append(f"alg={alg}")
        return self.post_auth(server, query="&".join(params))[1]

    def check_header(self, token, alg, typ="JWT"):
        """The header is exactly {alg, typ, kid} with these values and a
        decimal kid string; returns (header, claims)."""
        try:
            header, claims = split_jwt(token)
        except ValueError as exc:
            self.failure(f"not a compact JWS ({exc}): {token!r}")
        self.assertEqual(set(header), {"alg", "typ", "kid"}, f"header {header}")
        self.assertEqual(header["alg"], alg, f"header {header}")
        self.assertEqual(header["typ"], typ, f"header {header}")
        self.assertIsInstance(header["kid"], str, f"header {header}")
        self.assertRegex(header["kid"], KID_RE, f"header {header}")
        return header, claims

    def verify_both(self, token, jwk, alg, what="token", **decode_args):
        """Verify token with PyJWT and with openssl against the JWK: its
        alg and the header's must be alg. Returns PyJWT's claims."""
        header = jwt.get_unverified_header(token)
        self.assertEqual(jwk.get("alg"), alg, f"{what}: JWK {jwk}")
        self.assertEqual(header.get("alg"), jwk.get("alg"),
                         f"{what}: header alg {header} differs from the JWK's {jwk}")
        options = decode_args.pop("options", {})
        try:
            claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[alg],
                                options={"require": ["exp", "iat"], **options},
                                **decode_args)
        except jwt.PyJWTError as exc:
            self.failure(f"{what} ({alg}, kid {header.get('kid')}) does not "
                         f"verify with PyJWT: {exc!r}")
        self.assertOpensslVerifies(token, jwk, alg, what)
        return claims

    def assertOpensslVerifies(self, token, jwk, alg, what="token"):
        signing_input, signature = jws_parts(token)
        if alg in ("ES256", "EdDSA"):
            self.assertEqual(len(signature), 64,
                             f"{what}: an {alg} signature is 64 bytes (ES256: raw "
                             f"R||S, not DER), got {len(signature)}")
        pem = spki_pem(public_key_from_jwk(jwk))
        ok, out = openssl_verify(alg, pem, signing_input, signature, self.tmp)
        self.assertTrue(ok, f"{what} ({alg}, kid {jwk.get('kid')}): openssl "
                            f"does not verify it: {out}")
        return pem

    def assertOpensslRejects(self, token, jwk, alg, what="token"):
        """The control: openssl refuses the signature over other bytes."""
        signing_input, signature = jws_parts(token)
        pem = spki_pem(public_key_from_jwk(jwk))
        tampered = signing_input[:-1] + (b"A" if signing_input[-1:] != b"A" else b"B")
        ok, out = openssl_verify(alg, pem, tampered, signature, self.tmp)
        self.assertFalse(ok, f"{what}: openssl accepted a signature over "
                             f"other bytes: {out}")

    def verify_served(self, server, token, alg, what="token", jwks=None, **decode_args):
        """Verify a token against the server's JWKS (fetched now unless
        given): its kid must be published with alg. Returns the claims."""
        jwks = self.get_jwks(server) if jwks is None else jwks
        header = jwt.get_unverified_header(token)
        jwk = jwk_by_kid(jwks, header.get("kid"))
        self.assertIsNotNone(jwk, f"{what}: kid {header.get('kid')!r} is not in "
                                  f"the JWKS {jwks_algs(jwks)}")
        return self.verify_both(token, jwk, alg, what, **decode_args)

    # -- JWKs

    def check_jwk_members(self, jwk, rsa_bits=2048):
        """One published key: exactly its type's members, the fixed
        widths, no private member."""
        alg = jwk.get("alg")
        self.assertIn(alg, ALGS, f"JWK {jwk}")
        kty = KTY[alg]
        self.assertEqual(jwk.get("kty"), kty, f"JWK {jwk}")
        self.assertEqual(set(jwk), JWK_MEMBERS[kty], f"members of {jwk}")
        self.assertEqual(PRIVATE_MEMBERS & set(jwk), set(), f"private member in {jwk}")
        self.assertIsInstance(jwk["kid"], str, f"JWK {jwk}")
        self.assertRegex(jwk["kid"], KID_RE, f"JWK {jwk}")
        self.assertEqual(jwk["use"], "sig", f"JWK {jwk}")
        for name in set(jwk) - {"kid", "kty", "use", "alg", "crv"}:
            self.assertRegex(jwk[name], r"\A[A-Za-z0-9_-]+\Z",
                             f"{name} of {jwk} is not unpadded base64url")
        if kty == "RSA":
            modulus = b64url_decode(jwk["n"])
            self.assertEqual(len(modulus), rsa_bits // 8, f"n of RSA-{rsa_bits}: {jwk}")
            self.assertGreaterEqual(modulus[0], 0x80, f"n has a leading zero: {jwk}")
            self.assertEqual(jwk["e"], "AQAB", f"JWK {jwk}")
        elif kty == "EC":
            self.assertEqual(jwk["crv"], "P-256", f"JWK {jwk}")
            self.assertEqual(len(b64url_decode(jwk["x"])), 32, f"x of {jwk}")
            self.assertEqual(len(b64url_decode(jwk["y"])), 32, f"y of {jwk}")
        else:
            self.assertEqual(jwk["crv"], "Ed25519", f"JWK {jwk}")
            self.assertEqual(len(b64url_decode(jwk["x"])), 32, f"x of {jwk}")
        try:
            public_key_from_jwk(jwk)  # EC: the point is on the curve
        except ValueError as exc:
            self.failure(f"JWK {jwk} is not a valid public key: {exc}")

    def check_jwks(self, jwks, algs, rsa_bits=2048):
        """The whole set: no private member anywhere, unique kids, every
        key well formed, and exactly the algorithms algs present."""
        self.assertEqual(set(jwks), {"keys"}, f"JWKS top level: {jwks}")
        self.assertEqual(PRIVATE_MEMBERS & all_json_keys(jwks), set(),
                         f"a private member in the JWKS {jwks}")
        kids = jwks_kids(jwks)
        self.assertEqual(len(kids), len(set(kids)), f"duplicate kids {kids}")
        for jwk in jwks["keys"]:
            with self.subTest(kid=jwk.get("kid"), alg=jwk.get("alg")):
                self.check_jwk_members(jwk, rsa_bits)
        self.assertEqual(set(jwks_algs(jwks).values()), set(algs),
                         f"algorithms in the JWKS {jwks_algs(jwks)}")


class AlgTestCase(AlgChecks, JwksdTestCase):
    pass


class SharedAlgTestCase(AlgChecks, SharedServerTestCase):
    pass


# ------------------------------------------------- the verifiers themselves

class VerifierSelfTests(unittest.TestCase):
    """The openssl check and the DER encoder accept what cryptography signs
    and refuse a signature over other bytes: a pass elsewhere means
    something."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="jwksd-ossl-")
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)

    def sign(self, alg, key, data):
        if alg == "RS256":
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if alg == "PS256":
            return key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                            hashes.SHA256())
        if alg == "ES256":
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return key.sign(data)

    def test_openssl_verifier_accepts_good_and_refuses_bad_signatures(self):
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        keys = {"RS256": rsa_key, "PS256": rsa_key,
                "ES256": ec.generate_private_key(ec.SECP256R1()),
                "EdDSA": ed25519.Ed25519PrivateKey.generate()}
        data = b"eyJhbGciOiJ4In0.eyJ4IjoxfQ"
        for alg, key in keys.items():
            with self.subTest(alg):
                sig = self.sign(alg, key, data)
                pem = spki_pem(key.public_key())
                ok, out = openssl_verify(alg, pem, data, sig, self.tmp)
                self.assertTrue(ok, out)
                ok, out = openssl_verify(alg, pem, data + b"x", sig, self.tmp)
                self.assertFalse(ok, f"accepted other bytes: {out}")
        # PS256 with another salt length is not accepted as PS256.
        sig = rsa_key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 20),
                           hashes.SHA256())
        ok, out = openssl_verify("PS256", spki_pem(rsa_key.public_key()), data, sig,
                                 self.tmp)
        self.assertFalse(ok, f"PS256 with a 20-byte salt accepted: {out}")
        # RS256 is not PS256.
        sig = self.sign("RS256", rsa_key, data)
        ok, out = openssl_verify("PS256", spki_pem(rsa_key.public_key()), data, sig,
                                 self.tmp)
        self.assertFalse(ok, f"an RS256 signature passed as PS256: {out}")

    def test_der_encoder(self):
        self.assertEqual(der_integer(b"\x00\x00\x01"), b"\x02\x01\x01")
        self.assertEqual(der_integer(b"\x80"), b"\x02\x02\x00\x80")
        self.assertEqual(der_integer(b"\x00" * 32), b"\x02\x01\x00")
        self.assertEqual(der_length(200), b"\x81\xc8")
        r, s = b"\x7f" + b"\x01" * 31, b"\xff" * 32
        der = ecdsa_raw_to_der(r + s)
        self.assertEqual(der, b"\x30\x45\x02\x20" + r + b"\x02\x21\x00" + s)
        with self.assertRaises(ValueError):
            ecdsa_raw_to_der(b"\x01" * 63)


# ------------------------------------------------------- every algorithm

class AllAlgorithmsTests(SharedAlgTestCase):
    """One server with every algorithm: tokens, JWKs, ?expired=true."""

    server_args = ("--alg", ALL_ALGS)

    def test_tokens_of_every_algorithm_verify_with_pyjwt_and_openssl(self):
        server = self.server
        # The first algorithm of the list signs when none is asked for.
        token = self.token_for(server)
        self.check_header(token, ALGS[0])
        jwks = self.get_jwks(server)
        self.verify_served(server, token, ALGS[0], "default token", jwks=jwks)
        signers = {}
        for alg in ALGS:
            with self.subTest(alg):
                token = self.token_for(server, alg)
                header, claims = self.check_header(token, alg)
                jwk = jwk_by_kid(jwks, header["kid"])
                self.assertIsNotNone(jwk, f"{alg}: kid {header['kid']} not in "
                                          f"{jwks_algs(jwks)}")
                verified = self.verify_both(token, jwk, alg, f"?alg={alg}")
                self.assertEqual(verified, claims)
                self.assertOpensslRejects(token, jwk, alg, f"?alg={alg}")
                signers[alg] = header["kid"]
                if alg in ("RS256", "PS256"):
                    # PKCS#1 v1.5 and PSS are not interchangeable.
                    other = "PS256" if alg == "RS256" else "RS256"
                    signing_input, signature = jws_parts(token)
                    ok, out = openssl_verify(other, spki_pem(public_key_from_jwk(jwk)),
                                             signing_input, signature, self.tmp)
                    self.assertFalse(ok, f"an {alg} signature verifies as {other}: {out}")
        self.assertEqual(len(set(signers.values())), len(ALGS),
                         f"every algorithm has a key of its own: {signers}")

    def test_jwks_members_exactly_and_no_private_member(self):
        server = self.server
        for alg in ALGS:
            self.token_for(server, alg)
            self.token_for(server, alg, expired=True)
        jwks = self.get_jwks(server)
        self.check_jwks(jwks, ALGS)
        by_alg = {}
        for jwk in jwks["keys"]:
            by_alg.setdefault(jwk["alg"], []).append(jwk["kid"])
        self.assertEqual({a: len(k) for a, k in by_alg.items()}, {a: 1 for a in ALGS},
                         f"one published key per algorithm on a fresh store: {by_alg}")
        # The raw body, too: no private member name as a JSON key anywhere.
        body = self.request(server, "GET", JWKS_PATH).body
        for name in sorted(PRIVATE_MEMBERS):
            self.assertNotIn(f'"{name}":'.encode(), body, f"{name} in the JWKS body")

    def test_published_keys_are_the_stored_private_keys_public_halves(self):
        server = self.server
        jwks = self.get_jwks(server)
        records = self.store_records(server.db)
        for jwk in jwks["keys"]:
            with self.subTest(kid=jwk["kid"], alg=jwk["alg"]):
                self.assertIn(jwk["kid"], records, "a published kid not in the store")
                expected = public_jwk_of_blob(records[jwk["kid"]][0], jwk["alg"])
                got = {k: v for k, v in jwk.items() if k not in ("kid", "use")}
                self.assertEqual(got, expected)

    def test_expired_token_of_every_algorithm(self):
        server = self.server
        jwks = self.get_jwks(server)
        listed = self.key_list(db=server.db)
        records = self.store_records(server.db)
        expired_kids = {}
        for alg in ALGS:
            with self.subTest(alg):
                _, normal = self.check_header(self.token_for(server, alg), alg)
                token = self.token_for(server, alg, expired=True)
                header, claims = self.check_header(token, alg)
                kid = header["kid"]
                now = time.time()
                self.assertLess(claims["exp"], now, f"exp must be past: {claims}")
                self.assertEqual(claims["nbf"], claims["iat"], claims)
                self.assertLess(claims["iat"], claims["exp"], claims)
                self.assertNotIn(kid, jwks_kids(jwks),
                                 f"the expired {alg} key {kid} is published")
                self.assertIn(kid, listed, f"expired kid {kid} not in keys list")
                self.assertEqual(listed[kid]["alg"], alg, listed[kid])
                self.assertEqual(listed[kid]["state"], "expired", listed[kid])
                # Its key, from the store: verifies (exp aside) with both.
                blob, key_exp = records[kid]
                self.assertLessEqual(key_exp, now, f"row {kid} is not expired")
                self.assertLessEqual(claims["exp"], key_exp,
                                     "the token outlives its key")
                jwk = {"kid": kid, "use": "sig", **public_jwk_of_blob(blob, alg)}
                self.verify_both(token, jwk, alg, f"expired {alg}",
                                 options={"verify_exp": False})
                with self.assertRaises(jwt.ExpiredSignatureError):
                    jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[alg])
                # Not signed with the published key of its algorithm.
                published = jwk_by_kid(jwks, jwt.get_unverified_header(
                    self.token_for(server, alg))["kid"])
                with self.assertRaises(jwt.InvalidSignatureError,
                                       msg=f"expired {alg} token verifies with the "
                                           f"published key"):
                    jwt.decode(token, jwt.PyJWK(published).key, algorithms=[alg],
                               options={"verify_exp": False})
                expired_kids[alg] = kid
        self.assertEqual(len(set(expired_kids.values())), len(ALGS),
                         f"one expired key per algorithm: {expired_kids}")

    def test_store_holds_pkcs1_for_rs256_and_pkcs8_for_the_others(self):
        server = self.server
        for alg in ALGS:
            self.token_for(server, alg)
        records = self.store_records(server.db)
        listed = self.key_list(db=server.db)
        self.assertEqual(set(listed), set(records))
        counts = {}
        for kid, (blob, _) in records.items():
            alg = listed[kid]["alg"]
            counts[alg] = counts.get(alg, 0) + 1
            with self.subTest(kid=kid, alg=alg):
                self.check_blob(blob, alg)
        self.assertEqual(counts, {a: 2 for a in ALGS},
                         f"a signing and an expired key per algorithm: {counts}")

    def check_blob(self, blob, alg):
        if alg == "RS256":
            self.assertTrue(blob.startswith(PKCS1_HEADER), blob[:40])
            self.assertIsInstance(public_key_of_blob(blob), rsa.RSAPublicKey)
            return
        self.assertTrue(blob.startswith(PKCS8_HEADER), blob[:40])
        der = pem_body_der(blob)
        public = public_key_of_blob(blob)
        if alg == "PS256":
            self.assertIn(OID_RSASSA_PSS, der, "a PS256 key is an RSASSA-PSS key")
            self.assertIsInstance(public, rsa.RSAPublicKey)
        elif alg == "ES256":
            self.assertIn(OID_EC_PUBLIC_KEY, der)
            self.assertIn(OID_PRIME256V1, der)
            self.assertIsInstance(public, ec.EllipticCurvePublicKey)
            self.assertEqual(public.curve.name, "secp256r1")
        else:
            self.assertIn(OID_ED25519, der)
            self.assertIsInstance(public, ed25519.Ed25519PublicKey)

    def test_export_public_equals_the_served_jwks(self):
        server = self.server
        res = self.keys_ok("export-public", db=server.db)
        served = self.request(server, "GET", JWKS_PATH).body
        self.assertEqual(json.loads(res.stdout), json.loads(served))
        self.assertEqual(PRIVATE_MEMBERS & all_json_keys(json.loads(res.stdout)), set())


class SingleAlgorithmMixin:
    """A server with one algorithm: it signs every token, only its keys are
    published, any other is refused."""

    alg = None
    rsa_bits = 2048

    def test_only_this_algorithm(self):
        server, alg = self.server, self.alg
        jwks = self.get_jwks(server)
        self.check_jwks(jwks, [alg], self.rsa_bits)
        self.assertEqual(len(jwks["keys"]), 1, jwks_algs(jwks))
        for token in (self.token_for(server), self.token_for(server, alg)):
            header, _ = self.check_header(token, alg)
            self.assertEqual(header["kid"], jwks["keys"][0]["kid"])
            self.verify_served(server, token, alg, jwks=jwks)
        token = self.token_for(server, alg, expired=True)
        header, claims = self.check_header(token, alg)
        self.assertNotIn(header["kid"], jwks_kids(jwks))
        self.assertLess(claims["exp"], time.time())
        blob, _ = self.store_records(server.db)[header["kid"]]
        jwk = {"kid": header["kid"], "use": "sig", **public_jwk_of_blob(blob, alg)}
        self.verify_both(token, jwk, alg, "expired", options={"verify_exp": False})
        for other in ALGS:
            if other != alg:
                with self.subTest(unconfigured=other):
                    resp = self.request(server, "POST", f"{AUTH_PATH}?alg={other}")
                    self.assertJsonError(resp, 400, f"alg={other}")
                    self.assertEqual(resp.json(), NOT_AVAILABLE)


class OnlyRS256Tests(SingleAlgorithmMixin, SharedAlgTestCase):
    alg = "RS256"
    server_args = ("--alg", "RS256")


class OnlyPS256With4096BitsTests(SingleAlgorithmMixin, SharedAlgTestCase):
    # The one RSA-4096 server of the suite (its key generation is slow).
    alg = "PS256"
    rsa_bits = 4096
    server_args = ("--alg", "PS256", "--rsa-bits", "4096")


class OnlyES256Tests(SingleAlgorithmMixin, SharedAlgTestCase):
    alg = "ES256"
    server_args = ("--alg", "ES256")


class OnlyEdDSATests(SingleAlgorithmMixin, SharedAlgTestCase):
    alg = "EdDSA"
    server_args = ("--alg", "EdDSA")


# ------------------------------------------------------------- refusals

class RefusedAlgorithmTests(SharedAlgTestCase):
    """?alg= names that must get 400 without a token, the server serving on."""

    server_args = ("--alg", "ES256,RS256")

    BAD = {
        "none": "alg=none",
        "None": "alg=None",
        "NONE": "alg=NONE",
        "HS256": "alg=HS256",
        "HS384": "alg=HS384",
        "HS512": "alg=HS512",
        "unconfigured PS256": "alg=PS256",
        "unconfigured EdDSA": "alg=EdDSA",
        "NUL after the name": "alg=ES256%00",
        "NUL before the name": "alg=%00ES256",
        "empty": "alg=",
        "100 bytes": "alg=" + "E" * 100,
        "ES256 and 95 more bytes": "alg=ES256" + "A" * 95,
        "lower case": "alg=es256",
        "mixed case": "alg=Es256",
        "eddsa lower case": "alg=eddsa",
        "trailing space": "alg=ES256%20",
        "leading space": "alg=%20ES256",
        "plus as space": "alg=ES256+",
        "two names": "alg=ES256,RS256",
        "ES256 prefix": "alg=ES2",
        "ES256 and more": "alg=ES2566",
        "Ed25519": "alg=Ed25519",
        "ES384": "alg=ES384",
        "RS512": "alg=RS512",
        "UTF-8": "alg=ES256%C3%A9",
        "high byte": "alg=%FF",
        "newline": "alg=ES256%0A",
        "with expired": "expired=true&alg=none",
        "expired and HS256": "alg=HS256&expired=true",
    }

    def test_refused_alg_values_get_400_json_and_no_token(self):
        server = self.server
        for name, query in self.BAD.items():
            with self.subTest(name, query=query):
                resp = self.request(server, "POST", f"{AUTH_PATH}?{query}")
                self.assertJsonError(resp, 400, query)
                self.assertEqual(resp.json(), NOT_AVAILABLE, query)
                self.assertNotIn(b"token", resp.body)
                self.assertNotIn(b"eyJ", resp.body)
        # It keeps serving both configured algorithms.
        self.assertTrue(server.running, "the server died")
        jwks = self.get_jwks(server)
        for alg in ("ES256", "RS256"):
            token = self.token_for(server, alg)
            self.check_header(token, alg)
            self.verify_served(server, token, alg, jwks=jwks)
        self.check_header(self.token_for(server), "ES256")

    def test_refusals_are_logged_without_the_request_bytes(self):
        server = self.server
        marker = "zzalgmarker"
        self.request(server, "POST", f"{AUTH_PATH}?alg={marker}")
        self.wait_for("a log line of the refusal", lambda: any(
            "algorithm not available" in line for line in server.stderr_lines()))
        self.assertNotIn(marker, server.stderr_text())


class StartupRefusalTests(AlgTestCase):
    """Flags that must stop jwksd with exit 2 and a message, before it
    listens or creates a store."""

    def run_cli(self, *args):
        port = free_port()
        cwd = self.make_tmpdir()
        res = run_jwksd(["--listen", f"{LOOPBACK}:{port}", "--backend", BACKEND,
                         *args], cwd=cwd, timeout=5, watch_port=port)
        if res.returncode is None:
            self.failure(f"jwksd did not exit:\n{res.describe()}")
        return res, cwd

    def test_bad_flags_exit_2_with_a_message(self):
        cases = [
            (["--alg", "HS256"], "--alg"),
            (["--alg", "none"], "--alg"),
            (["--alg", "RS256,RS256"], "--alg"),
            (["--alg", "ES256,RS256,ES256"], "--alg"),
            (["--alg", "rs256"], "--alg"),
            (["--alg", "RS256,HS256"], "--alg"),
            (["--alg", ""], "--alg"),
            (["--alg", ","], "--alg"),
            (["--alg", "ES384"], "--alg"),
            (["--rsa-bits", "1024"], "--rsa-bits"),
            (["--rsa-bits", "2047"], "--rsa-bits"),
            (["--rsa-bits", "8192"], "--rsa-bits"),
            (["--rsa-bits", "abc"], "--rsa-bits"),
            (["--issuer", "http://example.com"], "--issuer"),
            (["--issuer", "https://x/?q"], "--issuer"),
            (["--issuer", "https://x/#f"], "--issuer"),
            (["--issuer", "https://x?q=1"], "--issuer"),
            (["--issuer", "ftp://x"], "--issuer"),
            (["--issuer", "example.com"], "--issuer"),
            # http for loopback only: names that merely start like one.
            (["--issuer", "http://127.0.0.1.example.com"], "--issuer"),
            (["--issuer", "http://localhost.example.com"], "--issuer"),
            (["--issuer", "http://127.0.0.1@evil.example"], "--issuer"),
            (["--issuer", "http://[::1].evil.example"], "--issuer"),
            (["--issuer", "http://[::1]evil.example/"], "--issuer"),
            (["--issuer", "http://10.0.0.1"], "--issuer"),
            (["--issuer", ""], "--issuer"),
            (["--token-type", "at+jwt"], "--issuer"),
            (["--token-type", "at+jwt", "--issuer", "https://x.example"], "--audience"),
            (["--token-type", "at+jwt", "--audience", "api"], "--issuer"),
            (["--token-type", "bogus"], "--token-type"),
            (["--audience", ""], "--audience"),
        ]
        for args, flag in cases:
            with self.subTest(args=args):
                res, cwd = self.run_cli(*args)
                self.assertEqual(res.returncode, 2, res.describe())
                self.assertIn(flag, res.stderr, res.describe())
                self.assertFalse(res.listened, f"listened: {res.describe()}")
                self.assertEqual(list(cwd.iterdir()), [],
                                 f"created files: {res.describe()}")

    def test_loopback_http_issuers_are_accepted(self):
        # http is allowed for loopback and localhost only: these start.
        for issuer in ("http://127.0.0.1:8080", "http://localhost:9000/x",
                       "http://[::1]:8443", "https://idp.example.com/tenant"):
            with self.subTest(issuer):
                server = self.start_server("--issuer", issuer,
                                           workdir=self.make_tmpdir())
                self.assertEqual(split_jwt(self.token_for(server))[1]["iss"], issuer)
                self.stop_server(server)

    def test_keys_rotate_refuses_bad_algorithms(self):
        db = self.store_path()
        server = self.start_server()
        self.token_for(server)
        self.stop_server(server)
        before = self.store_records(db)
        for args in (["--alg", "HS256"], ["--alg", "none"], ["--alg", "es256"],
                     ["--alg", "RS256", "--rsa-bits", "1024"]):
            with self.subTest(args=args):
                res = self.keys("rotate", *args, db=db)
                self.assertEqual(res.returncode, 2, res.describe())
        self.assertEqual(self.store_records(db), before, "a refused rotate wrote")


# ------------------------------------------------------------- rotation

class RotationTests(AlgTestCase):

    # Keys that live seconds: tokens live 1 s, a key signs for 5 s
    # (12 - (2 + 2) published ahead - 1 - 2 after), and each successor is
    # made 5 s before it signs (published 4 s ahead, made 1 s earlier), so
    # that key generation slowed down by a loaded machine does not leave an
    # algorithm without a signing key.
    FAST = ("--key-ttl", "12", "--token-ttl", "1", "--jwks-max-age", "2",
            "--margin", "2")

    def test_every_algorithm_rotates_on_its_own_schedule(self):
        server = self.start_server("--alg", ALL_ALGS, *self.FAST)
        seen = {alg: [] for alg in ALGS}  # signing kids in order
        kid_alg = {}
        checked = 0
        # Until every algorithm had a successor sign (the first key of a
        # fresh store signs about 9 s), at most 60 s.
        started = time.time()
        while time.time() < started + 60 and min(len(k) for k in seen.values()) < 2:
            tokens = {alg: self.token_for(server, alg) for alg in ALGS}
            jwks = self.get_jwks(server)
            fetched = time.time()
            for alg, token in tokens.items():
                header, claims = self.check_header(token, alg)
                kid = header["kid"]
                self.assertEqual(kid_alg.setdefault(kid, alg), alg,
                                 f"kid {kid} signed as {kid_alg[kid]} and {alg}")
                if not seen[alg] or seen[alg][-1] != kid:
                    seen[alg].append(kid)
                jwk = jwk_by_kid(jwks, kid)
                if jwk is None:
                    # Only a token that had expired when the JWKS was
                    # answered may have a key already out of it.
                    self.assertLessEqual(claims["exp"], fetched,
                                         f"unexpired {alg} token of kid {kid} but its "
                                         f"key is not in the JWKS {jwks_algs(jwks)}")
                    continue
                checked += 1
                self.verify_both(token, jwk, alg, f"{alg} token of kid {kid}",
                                 options={"verify_exp": False})
            self.assertEqual(PRIVATE_MEMBERS & all_json_keys(jwks), set())
            for jwk in jwks["keys"]:
                self.check_jwk_members(jwk)
            time.sleep(0.25)
        self.assertGreater(checked, 0)
        for alg in ALGS:
            kids = [int(k) for k in seen[alg]]
            self.assertGreaterEqual(len(kids), 2, f"{alg}: no successor signed "
                                                  f"(signing kids {seen})")
            self.assertEqual(kids, sorted(kids), f"{alg}: kids only grow: {kids}")
        listed = self.key_list(db=server.db)
        for kid, alg in kid_alg.items():
            self.assertEqual(listed[kid]["alg"], alg, listed[kid])
        for alg in ALGS:
            self.assertGreaterEqual(
                sum(1 for e in listed.values() if e["alg"] == alg), 3,
                f"{alg}: its own successors in the store: {listed}")

    def test_keys_rotate_alg_makes_a_successor_of_that_algorithm_only(self):
        db = self.store_path()
        server = self.start_server("--alg", "RS256,ES256,EdDSA", db=db)
        signers = {alg: split_jwt(self.token_for(server, alg))[0]["kid"]
                   for alg in ("RS256", "ES256", "EdDSA")}
        before = self.key_list(db=db)

        res = self.keys_ok("rotate", "--alg", "ES256", db=db)
        after = self.key_list(db=db)
        new = set(after) - set(before)
        self.assertEqual(len(new), 1, f"one new key: {sorted(new)}\n{res.describe()}")
        (new_kid,) = new
        self.assertEqual(after[new_kid]["alg"], "ES256", after[new_kid])
        self.assertEqual(after[new_kid]["state"], "pending", after[new_kid])
        self.assertIn(f"key {new_kid}", res.stdout, res.describe())
        self.assertIn("ES256", res.stdout, res.describe())
        for kid, entry in before.items():
            if entry["alg"] != "ES256":
                self.assertEqual(after[kid], entry, f"a {entry['alg']} key changed")
        self.assertEqual(after[signers["ES256"]]["retire_at"],
                         after[new_kid]["activate_at"],
                         "the old ES256 key retires when the new one signs")

        jwks = self.wait_for(f"key {new_kid} in the JWKS", lambda: (
            lambda j: j if new_kid in jwks_kids(j) else None)(self.get_jwks(server)))
        self.check_jwks(jwks, ("RS256", "ES256", "EdDSA"))
        counts = {}
        for alg in jwks_algs(jwks).values():
            counts[alg] = counts.get(alg, 0) + 1
        self.assertEqual(counts, {"RS256": 1, "ES256": 2, "EdDSA": 1}, jwks_algs(jwks))
        self.assertEqual(jwk_by_kid(jwks, new_kid)["alg"], "ES256")
        # The new key waits; the old one still signs.
        for alg, kid in signers.items():
            token = self.token_for(server, alg)
            self.assertEqual(split_jwt(token)[0]["kid"], kid, f"{alg} signer changed")
            self.verify_served(server, token, alg, jwks=jwks)

        # The other algorithms rotate on their own too.
        res = self.keys_ok("rotate", "--alg", "EdDSA", db=db)
        again = self.key_list(db=db)
        (ed_kid,) = set(again) - set(after)
        self.assertEqual(again[ed_kid]["alg"], "EdDSA", again[ed_kid])
        self.assertEqual(again[ed_kid]["state"], "pending", again[ed_kid])

        # The table: an ALG column with each key's algorithm.
        res = self.keys_ok("list", db=db)
        lines = [line.split() for line in res.stdout.splitlines() if line.strip()]
        self.assertEqual(lines[0][:2], ["KID", "ALG"], res.describe())
        rows = {cols[0]: cols[1] for cols in lines[1:]}
        self.assertEqual(rows, {kid: e["alg"] for kid, e in again.items()}, res.describe())
        self.assertEqual(set(rows.values()), {"RS256", "ES256", "EdDSA"})

        # export-public: the served set, every algorithm.
        self.wait_for(f"key {ed_kid} in the JWKS",
                      lambda: ed_kid in jwks_kids(self.get_jwks(server)))
        res = self.keys_ok("export-public", db=db)
        self.assertEqual(json.loads(res.stdout),
                         json.loads(self.request(server, "GET", JWKS_PATH).body))


# ------------------------------------------------------- foreign keys

class ForeignKeyTests(AlgTestCase):
    """Keys another tool wrote into the store that jwksd must not use: a
    P-384 key and an Ed448 key (PKCS#8), an RSA-1024 key (PKCS#1)."""

    def foreign_keys(self):
        p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        rsa1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
        ed448_key = ed448.Ed448PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        self.assertTrue(p384.startswith(PKCS8_HEADER))
        self.assertTrue(rsa1024.startswith(PKCS1_HEADER))
        return {"P-384": p384, "RSA-1024": rsa1024, "Ed448": ed448_key}

    def insert_rows(self, db, rows):
        """Insert (blob, exp) rows as another tool would; returns the kids.
        The server must not be running (LMDB: the store is rewritten)."""
        if isinstance(db, PgStore):
            kids = []
            for blob, exp in rows:
                out = db.psql(f"INSERT INTO keys (key, exp) VALUES "
                              f"(decode('{blob.hex()}', 'hex'), {int(exp)}) RETURNING kid")
                kids.append(out.strip().splitlines()[-1].strip())
            return kids
        target = db if BACKEND == "sqlite" else self.lmdb_as_sqlite(db)
        con = sqlite3.connect(target)
        try:
            with con:
                kids = [str(con.execute("INSERT INTO keys (key, exp) VALUES (?, ?)",
                                        (blob, int(exp))).lastrowid)
                        for blob, exp in rows]
        finally:
            con.close()
        if BACKEND == "lmdb":
            for path in (Path(db), Path(f"{db}-lock")):
                path.unlink(missing_ok=True)
            res = run_jwksd(["copy", "--from", f"sqlite:{target}", "--to", f"lmdb:{db}"],
                            cwd=self.tmp, timeout=30)
            self.assertEqual(res.returncode, 0, res.describe())
        return kids

    ALGS = ("RS256", "ES256", "EdDSA")

    def test_foreign_keys_are_refused_logged_and_never_used(self):
        algs = self.ALGS
        db = self.store_path()
        first = self.start_server("--alg", ",".join(algs), db=db, label="first")
        signers = {a: split_jwt(self.token_for(first, a))[0]["kid"] for a in algs}
        expired = {a: split_jwt(self.token_for(first, a, expired=True))[0]["kid"]
                   for a in algs}
        self.stop_server(first)

        now = int(time.time())
        keys = self.foreign_keys()
        # Unexpired ones (would be published), and expired ones more recent
        # than the store's own (would sign ?expired=true).
        rows = [(blob, now + 86400 * 30) for blob in keys.values()]
        rows += [(blob, now - 30) for blob in keys.values()]
        foreign = self.insert_rows(db, rows)
        names = {kid: name for kid, name in zip(foreign, list(keys) * 2)}
        self.assertEqual(len(set(foreign)), len(rows), foreign)

        second = self.start_server("--alg", ",".join(algs), db=db, label="second")
        jwks = self.get_jwks(second)
        self.assertEqual(set(jwks_kids(jwks)) & set(foreign), set(),
                         f"a foreign key is published: {jwks_algs(jwks)}")
        self.check_jwks(jwks, algs)
        for alg in algs:
            with self.subTest(alg):
                token = self.token_for(second, alg)
                self.assertEqual(split_jwt(token)[0]["kid"], signers[alg])
                self.verify_served(second, token, alg, jwks=jwks)
                token = self.token_for(second, alg, expired=True)
                self.check_header(token, alg)
                self.assertEqual(split_jwt(token)[0]["kid"], expired[alg],
                                 "?expired=true signed with another key than the "
                                 "store's own expired one")
        for kid in foreign:
            self.assertTrue(
                any(re.search(rf"\bkey {kid}\b", line) for line in second.stderr_lines()),
                f"no log line names the refused {names[kid]} key {kid}")
        res = self.keys_ok("export-public", db=db)
        self.assertEqual(set(jwks_kids(json.loads(res.stdout))) & set(foreign), set(),
                         "keys export-public exports a foreign key")
        # Still refused after the server ran: nothing made them usable,
        # and they are still in the store (not deleted).
        records = self.store_records(db)
        for kid in foreign:
            self.assertIn(kid, records, f"foreign key {kid} was removed")
        self.assertEqual(set(jwks_kids(self.get_jwks(second))) & set(foreign), set())


# ----------------------------------------------------------------- claims

class DefaultTokenTests(SharedAlgTestCase):
    """No new flag: the assignment's token, byte for byte, and PKCS#1 rows."""

    server_args = ()

    def test_header_is_byte_for_byte_the_assignments(self):
        server = self.server
        for query in ("", "expired=true"):
            with self.subTest(query=query):
                token = self.post_auth(server, query=query)[1]
                raw = b64url_decode(token.split(".")[0])
                self.assertRegex(raw, rb'\A\{"alg":"RS256","typ":"JWT","kid":"[1-9][0-9]*"\}\Z')
                self.assertEqual(raw, json.dumps(
                    jwt.get_unverified_header(token), separators=(",", ":")).encode())
        token = self.post_auth(server)[1]
        claims = self.verify_served(server, token, "RS256")
        self.assertEqual(set(claims), {"iat", "nbf", "exp", "jti"}, claims)
        self.assertEqual(claims["exp"] - claims["iat"], DEFAULT_TOKEN_TTL, claims)

    def test_store_holds_only_pkcs1_pem(self):
        server = self.server
        self.post_auth(server)
        self.post_auth(server, query="expired=true")
        records = self.store_records(server.db)
        self.assertEqual(len(records), 2, list(records))
        for kid, (blob, _) in records.items():
            with self.subTest(kid=kid):
                self.assertTrue(blob.startswith(PKCS1_HEADER),
                                f"key {kid} is not PKCS#1 PEM: {blob[:40]!r}")
                key = serialization.load_pem_private_key(blob, password=None)
                self.assertIsInstance(key, rsa.RSAPrivateKey)
                self.assertEqual(key.key_size, 2048)

    def test_no_discovery_without_issuer(self):
        server = self.server
        for path in DISCOVERY_PATHS:
            for method in ("GET", "HEAD", "POST"):
                with self.subTest(path=path, method=method):
                    resp = self.request(server, method, path)
                    self.assertEqual(resp.status, 404, resp.describe())
                    if method != "HEAD":
                        self.assertJsonError(resp, 404, f"{method} {path}")
                    self.assertNotIn(b"issuer", resp.body)


class ClaimsTests(SharedAlgTestCase):
    """--issuer and one --audience on every algorithm."""

    ISSUER = "https://idp.example.com/tenant-7"
    AUDIENCE = "https://api.example.com"
    server_args = ("--alg", ALL_ALGS, "--issuer", ISSUER, "--audience", AUDIENCE)

    def test_registered_claims_of_every_algorithm(self):
        server = self.server
        jwks = self.get_jwks(server)
        for alg in ALGS:
            with self.subTest(alg):
                before = int(time.time())
                token = self.token_for(server, alg)
                after = int(time.time())
                _, claims = self.check_header(token, alg)
                self.assertEqual(set(claims), {"iss", "aud", "iat", "nbf", "exp", "jti"},
                                 f"claims {claims} (no sub without accounts)")
                for name in ("iat", "nbf", "exp"):
                    self.assertIs(type(claims[name]), int, claims)
                self.assertEqual(claims["nbf"], claims["iat"], claims)
                self.assertLessEqual(claims["nbf"], claims["iat"])
                self.assertLess(claims["iat"], claims["exp"], claims)
                self.assertEqual(claims["exp"] - claims["iat"], DEFAULT_TOKEN_TTL, claims)
                self.assertGreaterEqual(claims["iat"], before - CLOCK_SLACK, claims)
                self.assertLessEqual(claims["iat"], after + CLOCK_SLACK, claims)
                self.assertEqual(claims["iss"], self.ISSUER)
                self.assertEqual(claims["aud"], self.AUDIENCE, "one audience: a string")
                self.check_jti(claims["jti"])
                verified = self.verify_served(server, token, alg, jwks=jwks,
                                              issuer=self.ISSUER, audience=self.AUDIENCE)
                self.assertEqual(verified, claims)
                with self.assertRaises(jwt.InvalidAudienceError):
                    jwt.decode(token, jwt.PyJWK(jwk_by_kid(
                        jwks, split_jwt(token)[0]["kid"])).key, algorithms=[alg],
                        audience="https://other.example.com")
        # The expired token carries them too, with nbf = iat < exp < now.
        token = self.token_for(server, "ES256", expired=True)
        _, claims = self.check_header(token, "ES256")
        self.assertEqual(claims["iss"], self.ISSUER)
        self.assertEqual(claims["aud"], self.AUDIENCE)
        self.assertEqual(claims["nbf"], claims["iat"], claims)
        self.assertLess(claims["iat"], claims["exp"], claims)
        self.assertLess(claims["exp"], time.time(), claims)
        self.check_jti(claims["jti"])

    def check_jti(self, jti):
        self.assertIsInstance(jti, str)
        self.assertRegex(jti, JTI_RE, "jti: 22 base64url characters")
        raw = b64url_decode(jti)
        self.assertEqual(len(raw), 16, "jti: 128 bits")
        self.assertEqual(b64url(raw), jti, "jti: canonical base64url")

    def test_jti_distinct_over_2000_tokens(self):
        server = self.server
        threads, per_thread = 4, 500

        def worker(index):
            alg = ALGS[index % len(ALGS)]
            conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=HTTP_TIMEOUT)
            out = []
            try:
                for _ in range(per_thread):
                    conn.request("POST", f"{AUTH_PATH}?alg={alg}", body=b"")
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200:
                        raise AssertionError(f"HTTP {resp.status}: {body[:200]!r}")
                    out.append(json.loads(body)["token"])
            finally:
                conn.close()
            return out

        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            try:
                tokens = [t for batch in pool.map(worker, range(threads)) for t in batch]
            except (OSError, http.client.HTTPException, AssertionError) as exc:
                self.failure(f"a token request failed: {exc!r}")
        self.assertEqual(len(tokens), threads * per_thread)
        jtis = []
        for token in tokens:
            jti = split_jwt(token)[1]["jti"]
            self.assertRegex(jti, JTI_RE)
            jtis.append(jti)
        self.assertEqual(len(set(jtis)), len(jtis),
                         f"{len(jtis) - len(set(jtis))} repeated jti values")
        self.assertEqual(len(set(tokens)), len(tokens))

    def test_metadata_issuer_is_byte_identical(self):
        server = self.server
        for path in DISCOVERY_PATHS:
            resp = self.request(server, "GET", path)
            self.assertEqual(resp.status, 200, resp.describe())
            doc = resp.json()
            self.assertEqual(doc["issuer"], self.ISSUER)
            self.assertEqual(doc["jwks_uri"], self.ISSUER + JWKS_PATH)
            self.assertEqual(doc["token_endpoint"], self.ISSUER + AUTH_PATH)
            self.assertEqual(set(doc["id_token_signing_alg_values_supported"]), set(ALGS))


class TwoAudiencesTests(SharedAlgTestCase):

    ISSUER = "http://localhost:7001"
    AUDIENCES = ("api://first", "second-audience")
    server_args = ("--alg", "EdDSA", "--issuer", ISSUER,
                   "--audience", AUDIENCES[0], "--audience", AUDIENCES[1])

    def test_two_audiences_are_an_array_in_order(self):
        server = self.server
        for expired in (False, True):
            with self.subTest(expired=expired):
                token = self.token_for(server, expired=expired)
                _, claims = self.check_header(token, "EdDSA")
                self.assertEqual(claims["aud"], list(self.AUDIENCES))
                self.assertEqual(claims["iss"], self.ISSUER)
                self.assertNotIn("sub", claims)
        token = self.token_for(server)
        for audience in self.AUDIENCES:
            self.verify_served(server, token, "EdDSA", issuer=self.ISSUER,
                               audience=audience)
        with self.assertRaises(jwt.InvalidIssuerError):
            jwt.decode(token, jwt.PyJWK(self.get_jwks(server)["keys"][0]).key,
                       algorithms=["EdDSA"], audience=self.AUDIENCES[0],
                       issuer="http://localhost:7002")


class AccessTokenTests(SharedAlgTestCase):
    """--token-type at+jwt (RFC 9068 headers)."""

    ISSUER = "https://as.example.org"
    AUDIENCE = "https://rs.example.org"
    server_args = ("--alg", "ES256,RS256", "--token-type", "at+jwt",
                   "--issuer", ISSUER, "--audience", AUDIENCE)

    def test_access_token_header_and_claims(self):
        server = self.server
        jwks = self.get_jwks(server)
        for alg in ("ES256", "RS256"):
            with self.subTest(alg):
                token = self.token_for(server, alg)
                header, claims = self.check_header(token, alg, typ="at+jwt")
                raw = b64url_decode(token.split(".")[0])
                self.assertEqual(raw, ('{"alg":"%s","typ":"at+jwt","kid":"%s"}'
                                       % (alg, header["kid"])).encode())
                verified = self.verify_served(server, token, alg, jwks=jwks,
                                              issuer=self.ISSUER, audience=self.AUDIENCE)
                self.assertEqual(verified["iss"], self.ISSUER)
                self.assertEqual(verified["aud"], self.AUDIENCE)
        self.check_header(self.token_for(server, "ES256", expired=True), "ES256",
                          typ="at+jwt")


# -------------------------------------------------------------- discovery

class IssuerAtPortServer(Server):
    """A server whose --issuer is its own loopback URL (known at launch)."""

    def command(self):
        return super().command() + ["--issuer", self.issuer()]

    def issuer(self):
        return f"http://{self.host}:{self.port}"


class DiscoveryTests(SharedAlgTestCase):

    ALGS = ("EdDSA", "ES256", "PS256")
    server_args = ("--alg", ",".join(ALGS), "--audience", "api")

    @classmethod
    def setUpClass(cls):
        # SharedServerTestCase.setUpClass with a server of our own class.
        clear_secret(cls.addClassCleanup)
        tmp = tempfile.TemporaryDirectory(prefix="jwksd-shared-")
        cls.addClassCleanup(tmp.cleanup)
        workdir = Path(tmp.name)
        store = store_for(workdir, cls.server_backend)
        if isinstance(store, PgStore):
            cls.addClassCleanup(store.drop)
        cls.server = IssuerAtPortServer(workdir, db=store, backend=cls.server_backend,
                                        args=cls.server_args,
                                        label=f"shared-{cls.__name__}")
        cls.addClassCleanup(cls._stop_shared_server)
        cls.server.start()
        wait_until_ready(cls.server, configured_algs(cls.server_args))

    def metadata(self, path):
        resp = self.request(self.server, "GET", path)
        self.assertEqual(resp.status, 200, f"GET {path}: {resp.describe()}")
        self.assertJsonContentType(resp, f"GET {path}")
        try:
            doc = json.loads(resp.body.decode("utf-8"))
        except ValueError as exc:
            self.failure(f"GET {path}: not JSON ({exc}): {resp.describe()}")
        return resp, doc

    def test_metadata_passes_a_strict_check(self):
        server = self.server
        issuer = server.issuer()
        oidc_resp, doc = self.metadata(OIDC_PATH)
        oauth_resp, oauth = self.metadata(OAUTH_PATH)
        self.assertEqual(oidc_resp.body, oauth_resp.body, "the two documents differ")
        self.assertEqual(doc, oauth)
        self.assertEqual(set(doc), DISCOVERY_MEMBERS, f"members of {doc}")
        # OpenID Connect Discovery 1.0 section 4.3: exactly the issuer.
        self.assertEqual(doc["issuer"], issuer)
        for name in DISCOVERY_MEMBERS - {"issuer", "jwks_uri", "token_endpoint"}:
            self.assertIsInstance(doc[name], list, f"{name}: {doc}")
            self.assertTrue(doc[name], f"{name} is empty")
            for value in doc[name]:
                self.assertIsInstance(value, str, f"{name}: {doc}")
        self.assertEqual(set(doc["id_token_signing_alg_values_supported"]), set(self.ALGS))
        self.assertEqual(len(doc["id_token_signing_alg_values_supported"]), len(self.ALGS))
        self.assertNotIn("none", doc["id_token_signing_alg_values_supported"])

        # jwks_uri: on the issuer's host, and it serves the JWKS.
        self.assertEqual(doc["jwks_uri"], issuer + JWKS_PATH)
        url = urlsplit(doc["jwks_uri"])
        self.assertEqual((url.scheme, url.hostname, url.port),
                         ("http", server.host, server.port))
        resp = self.request(server, "GET", url.path)
        self.assertEqual(resp.status, 200, resp.describe())
        jwks = resp.json()
        self.assertEqual(jwks, self.get_jwks(server))
        self.check_jwks(jwks, self.ALGS)
        client = jwt.PyJWKClient(doc["jwks_uri"])

        # token_endpoint: POST there gives a token of this issuer that the
        # keys at jwks_uri verify, for every advertised algorithm.
        self.assertEqual(doc["token_endpoint"], issuer + AUTH_PATH)
        url = urlsplit(doc["token_endpoint"])
        self.assertEqual((url.scheme, url.hostname, url.port, url.path),
                         ("http", server.host, server.port, AUTH_PATH))
        for alg in doc["id_token_signing_alg_values_supported"]:
            with self.subTest(alg):
                resp = self.request(server, "POST", f"{url.path}?alg={alg}")
                self.assertEqual(resp.status, 200, resp.describe())
                token = resp.json()["token"]
                _, claims = self.check_header(token, alg)
                self.assertEqual(claims["iss"], doc["issuer"])
                key = client.get_signing_key_from_jwt(token)
                jwt.decode(token, key.key, algorithms=[alg], issuer=doc["issuer"],
                           audience="api")
                self.verify_served(server, token, alg, jwks=jwks,
                                   issuer=doc["issuer"], audience="api")

    def test_caching_headers_head_and_methods(self):
        server = self.server
        for path in DISCOVERY_PATHS:
            with self.subTest(path):
                first, doc = self.metadata(path)
                etag = first.header("ETag")
                self.assertIsNotNone(etag, first.describe())
                self.assertRegex(etag, r'\A"[^"]+"\Z', "a strong ETag")
                modified = first.header("Last-Modified")
                self.assertIsNotNone(modified, first.describe())
                self.assertIsNotNone(first.header("Cache-Control"), first.describe())
                again = self.request(server, "GET", path)
                self.assertEqual(again.header("ETag"), etag)
                self.assertEqual(again.body, first.body)

                cached = self.request(server, "GET", path, headers={"If-None-Match": etag})
                self.assertEqual(cached.status, 304, cached.describe())
                self.assertEqual(cached.body, b"")
                self.assertEqual(cached.header("ETag"), etag)
                fresh = self.request(server, "GET", path,
                                     headers={"If-None-Match": '"stale"'})
                self.assertEqual(fresh.status, 200, fresh.describe())
                self.assertEqual(fresh.body, first.body)
                since = self.request(server, "GET", path,
                                     headers={"If-Modified-Since": modified})
                self.assertEqual(since.status, 304, since.describe())

                # HEAD on a raw socket: a body after the head would show.
                data, closed = raw_exchange(server.port, (
                    f"HEAD {path} HTTP/1.1\r\nHost: {LOOPBACK}:{server.port}\r\n"
                    "Connection: close\r\n\r\n").encode())
                status, headers, body = parse_raw_response(data)
                self.assertEqual(status, 200, data[:400])
                self.assertEqual(body, b"", "HEAD carries a body")
                self.assertTrue(closed, "connection kept open after Connection: close")
                for name in ("Content-Type", "Content-Length", "ETag"):
                    self.assertEqual(header_of(headers, name), first.header(name), name)
                self.assertEqual(int(header_of(headers, "Content-Length")), len(first.body))

                for method in ("POST", "PUT", "DELETE", "PATCH"):
                    resp = self.request(server, method, path, body=b"{}")
                    self.assertJsonError(resp, 405, f"{method} {path}")
                    allow = {m.strip() for m in (resp.header("Allow") or "").split(",")}
                    self.assertEqual(allow, {"GET", "HEAD"}, resp.describe())

    def test_neighbouring_paths_are_404(self):
        server = self.server
        for path in ("/.well-known/openid-configuration/", "/.well-known/openid",
                     "/.well-known/oauth-authorization-server/x",
                     "/.well-known/openid-configurationx"):
            with self.subTest(path):
                self.assertJsonError(self.request(server, "GET", path), 404, path)


# ------------------------------------------------------- copy between stores

class CopyTests(AlgTestCase):

    def test_copy_keeps_every_algorithm(self):
        db = self.store_path()
        first = self.start_server("--alg", ALL_ALGS, db=db, label="source")
        expired = {a: split_jwt(self.token_for(first, a, expired=True))[0]["kid"]
                   for a in ALGS}
        tokens = {a: self.token_for(first, a) for a in ALGS}
        jwks = self.get_jwks(first)
        self.stop_server(first)

        dest = self.make_tmpdir() / "copy.db"
        source = f"postgres:{db}" if isinstance(db, PgStore) else f"{BACKEND}:{db}"
        res = run_jwksd(["copy", "--from", source, "--to", f"sqlite:{dest}"],
                        cwd=self.tmp, timeout=60)
        self.assertEqual(res.returncode, 0, res.describe())
        self.assertIn(f"copied {2 * len(ALGS)} keys", res.stdout, res.describe())

        second = self.start_server("--alg", ALL_ALGS, db=dest, backend="sqlite",
                                   label="copy")
        self.assertEqual(self.get_jwks(second), jwks)
        for alg in ALGS:
            with self.subTest(alg):
                self.verify_served(second, tokens[alg], alg)
                token = self.token_for(second, alg, expired=True)
                self.assertEqual(split_jwt(token)[0]["kid"], expired[alg])


if __name__ == "__main__":
    unittest.main()
