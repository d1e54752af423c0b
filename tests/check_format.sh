#!/bin/sh
# Every C file of ours follows .clang-format.
root=${1:?usage: check_format.sh SOURCE_DIR}
cd "$root" || exit 2
command -v clang-format >/dev/null || { echo "clang-format not installed"; exit 1; }
files=$(find server backends crypto include tests -name '*.[ch]' | sort)
clang-format --dry-run -Werror $files
