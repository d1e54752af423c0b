#!/bin/sh
# Fails when a third-party header is included outside the one directory that
# may include it: sqlite3.h, lmdb.h and libpq-fe.h only in backends/, OpenSSL
# and argon2.h only in crypto/, civetweb.h only in server/ and the HTTP
# layer's public header include/jwks_http.h (and tests),
# ks_backend.h only in backends/ (and the test-only fake store). PRIVATE linking cannot stop an #include of
# a system header.
root=${1:?usage: check_includes.sh SOURCE_DIR}
cd "$root" || exit 2
status=0
check() { # pattern allowed-paths-regex (directories end in /)
	hits=$(grep -rnE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]($1)" \
		server backends crypto include tests 2>/dev/null |
		grep -vE "^($2)" || true)
	if [ -n "$hits" ]; then
		printf 'include outside its layer (%s):\n%s\n' "$1" "$hits"
		status=1
	fi
}
check 'sqlite3\.h|lmdb\.h|libpq-fe\.h' 'backends/'
check 'openssl/' 'crypto/'
check 'argon2\.h' 'crypto/'
check 'civetweb\.h' 'server/|tests/|include/jwks_http\.h:'
check 'jansson\.h' 'server/|tests/'
# tests/ks_fake.c is a backend for tests only (never linked into jwksd).
check 'ks_backend\.h' 'backends/|tests/ks_fake\.c:'
[ $status -eq 0 ] && echo "include boundaries: 1 passed, 0 failed"
exit $status
