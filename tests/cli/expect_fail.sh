#!/usr/bin/env bash
# expect_fail.sh REGEX CMD [ARGS...]
# Passes when CMD exits with an error status and its stdout+stderr match the extended regular
# expression REGEX, i.e. bad input was refused with a message that names what is wrong.
# Prints what it got either way.
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
  echo "$1 (exit $status, expected output matching /$regex/) from: ${command[*]}"
  printf '%s\n' "--- output ---" "$output"
  exit "$2"
}

if (( status == 0 )); then
  finish "FAIL: the command succeeded" 1
elif (( status >= 126 )); then
  # 126/127: not runnable; above 128: killed by a signal. A crash is not a refusal.
  finish "FAIL: the command did not run or crashed" 1
elif ! [[ $output =~ $regex ]]; then
  finish "FAIL: the message does not match" 1
fi
finish "ok" 0
