#!/usr/bin/env bash
# expect_success.sh REGEX CMD [ARGS...]
# Passes when CMD exits with status 0 and its stdout+stderr match the extended regular expression
# REGEX (which may span lines), i.e. it did what the output must show. Prints what it got either way.
set -uo pipefail

if (( $# < 2 )); then
  echo "usage: $0 REGEX CMD [ARGS...]" >&2
  exit 2
fi
regex=$1
shift
command=("$@")

output=$("${command[@]}" 2>&1)
status=$?

finish() {  # finish VERDICT EXIT_CODE
  echo "$1 (exit $status, expected 0 and output matching /$regex/) from: ${command[*]}"
  printf '%s\n' "--- output ---" "$output"
  exit "$2"
}

if (( status != 0 )); then
  finish "FAIL: the command failed" 1
elif ! [[ $output =~ $regex ]]; then
  finish "FAIL: the output does not match" 1
fi
finish "ok" 0
