#!/bin/sh
# Static analysis of our own sources; any finding fails the test.
root=${1:?usage: check_cppcheck.sh SOURCE_DIR}
cd "$root" || exit 2
command -v cppcheck >/dev/null || { echo "cppcheck not installed"; exit 1; }
cppcheck --quiet --error-exitcode=1 --inline-suppr \
	--enable=warning,performance,portability \
	--std=c11 -D__GNUC__ -I include -I backends -I crypto -I server \
	--suppress=missingIncludeSystem \
	server backends crypto include
