#!/usr/bin/env bash
# The netns-hosts fixture itself: refusals of bad command lines, then 2 hosts whose link is shaped
# to two rates in turn, each measured with iperf3 (h1 sending to h2 for 2 s): the achieved rate must
# lie within 85-102% of the rate asked (a token bucket passes no more than its rate; TCP over a
# veth on idle cores reaches it). Prints the figures. Then everything must be gone.
#   link_check.sh DIR
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$1
hosts=("$here/netns-hosts" --dir "$dir")
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

expect_refusal() {  # expect_refusal REGEX ARGS...
  local regex=$1; shift
  local out rc
  out=$("${hosts[@]}" "$@" 2>&1); rc=$?
  if (( rc != 2 )) || ! grep -Eq -- "$regex" <<< "$out"; then fail "netns-hosts $*: status $rc, output: $out"; fi
}
expect_refusal "expected a host count" up 0
expect_refusal "rate 'fast'" up 2 --rate fast
expect_refusal "--slots 2: expected 2 counts" up 2 --slots 2
expect_refusal "unknown command 'sideways'" sideways

command -v iperf3 >/dev/null || { echo "link_check: SKIPPED: iperf3 not found (bash launcher/install-deps)"; exit 77; }
trap '"${hosts[@]}" down >/dev/null 2>&1' EXIT
"${hosts[@]}" up 2 --rate 100mbit
rc=$?
(( rc == 0 )) || exit "$rc"
for rate in 100mbit 400mbit; do
  "${hosts[@]}" rate "$rate" || fail "rate $rate"
  want=$(( ${rate%mbit} * 1000000 ))
  "${hosts[@]}" on 2 iperf3 -s -1 -D -B 10.77.0.12 --logfile "$dir/iperf3-server.log" || fail "iperf3 server"
  sleep 0.3
  got=$("${hosts[@]}" run iperf3 -c h2 -t 2 -J | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))')
  echo "link_check: shaped to $rate: iperf3 measured $(( got / 1000000 )) Mbit/s"
  (( got * 100 >= want * 85 && got * 100 <= want * 102 )) || fail "rate $rate: measured $got bit/s, outside 85-102% of $want"
done
trap - EXIT
"${hosts[@]}" down || fail "down left something behind"
"${hosts[@]}" check >/dev/null || fail "check after down"
(( fails == 0 )) || exit 1
echo "link_check: ok"
