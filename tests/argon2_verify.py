"""Verify an Argon2id PHC string with two other implementations, for
tests/test_password.c: argon2-cffi (python3-argon2, on Debian's libargon2)
and PyNaCl (python3-nacl, libsodium's own Argon2id).

Usage: argon2_verify.py HASH PASSWORD_HEX
Exit status: 0 when both accept the password, 10 when both refuse it,
anything else when they disagree or fail.
"""
import sys

import argon2.exceptions
import argon2.low_level
import nacl.exceptions
import nacl.pwhash.argon2id


def with_libargon2(phc, password):
    try:
        return argon2.low_level.verify_secret(phc, password,
                                              argon2.low_level.Type.ID)
    except argon2.exceptions.VerifyMismatchError:
        return False


def with_libsodium(phc, password):
    try:
        return nacl.pwhash.argon2id.verify(phc, password)
    except nacl.exceptions.InvalidkeyError:
        return False


def main():
    phc = sys.argv[1].encode("ascii")
    password = bytes.fromhex(sys.argv[2])
    a = with_libargon2(phc, password)
    b = with_libsodium(phc, password)
    if a != b:
        print(f"libargon2 says {a}, libsodium says {b}", file=sys.stderr)
        return 2
    return 0 if a else 10


if __name__ == "__main__":
    sys.exit(main())
