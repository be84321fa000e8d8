#!/usr/bin/env bash
# deterministic.sh OUTDIR CMD...: runs CMD twice, each time with `--metrics OUTDIR/run{1,2}.jsonl`
# appended, and passes only if both runs succeed and every loss they logged (train_loss, val_loss,
# written with 17 significant digits) is identical. Throughput figures are ignored (they vary).
set -uo pipefail
out=$1
shift
mkdir -p "$out"
for i in 1 2; do
  if ! "$@" --metrics "$out/run$i.jsonl" >"$out/run$i.log" 2>&1; then
    echo "FAIL: run $i exited non-zero:"
    cat "$out/run$i.log"
    exit 1
  fi
done
losses() { grep -oE '"(train_loss|val_loss)":[^,}]*' "$1"; }
n=$(losses "$out/run1.jsonl" | wc -l)
if (( n < 3 )); then
  echo "FAIL: expected several logged losses, found $n"
  exit 1
fi
if ! diff <(losses "$out/run1.jsonl") <(losses "$out/run2.jsonl"); then
  echo "FAIL: the two runs logged different losses"
  exit 1
fi
echo "PASS: $n losses bitwise equal across two runs"
