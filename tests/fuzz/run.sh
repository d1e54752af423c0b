#!/bin/sh
# Run every libFuzzer target of a fuzz build directory through CTest (the
# fuzz_* tests), each for JWKS_FUZZ_SECONDS (set at configure time, 30 by
# default; setting it in the environment here reconfigures the directory).
#
#   tests/fuzz/run.sh BUILD_DIR [ctest arguments...]
#
# BUILD_DIR must be configured and built with -DJWKS_FUZZ=ON (see
# tests/fuzz/README.md). Any crash, leak, timeout or out-of-memory fails;
# the input is saved under BUILD_DIR/tests/fuzz/artifacts/<target>/.
set -eu

build=${1:?usage: tests/fuzz/run.sh BUILD_DIR [ctest arguments...]}
shift
if ! grep -q '^JWKS_FUZZ:BOOL=ON$' "$build/CMakeCache.txt" 2>/dev/null; then
	echo "tests/fuzz/run.sh: $build is not configured with -DJWKS_FUZZ=ON" >&2
	exit 2
fi
if [ -n "${JWKS_FUZZ_SECONDS:-}" ]; then
	cmake -DJWKS_FUZZ_SECONDS="$JWKS_FUZZ_SECONDS" "$build" >/dev/null
fi
exec ctest --test-dir "$build" -R '^fuzz_' --no-tests=error \
	--output-on-failure -j "${JWKS_FUZZ_JOBS:-$(nproc)}" "$@"
