#!/usr/bin/env bash
# expect_fail.sh REGEX CMD [ARGS...]
# Passes when CMD exits with an error status and its stdout+stderr match the extended regular
# expression REGEX, i.e. bad input was refused with a message that names what is wrong.
# Prints what it got either way. A status above 128 (killed by a signal) counts as a crash, not a
# refusal, unless UOE_EXPECT_SIGNAL=1 (tests where a rank is killed on purpose).
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
elif (( status == 126 || status == 127 || (status > 128 && ${UOE_EXPECT_SIGNAL:-0} != 1) )); then
  # 126/127: not runnable; above 128: killed by a signal. A crash is not a refusal.
  finish "FAIL: the command did not run or crashed" 1
elif ! [[ $output =~ $regex ]]; then
  finish "FAIL: the message does not match" 1
fi
finish "ok" 0
