#!/usr/bin/env bash
# bf16_gemm.sh MODE CMD [ARGS...]
# The bf16 GEMM path at start-up (runtime/gemm.hpp, gemm_bf16_path), end to end: CMD (a uoe-train
# run with --precision bf16) under UOE_BF16_GEMM=MODE must
#   emulated  succeed, its "precision bf16:" line naming the emulated path as the user's choice;
#   onednn    succeed naming oneDNN's bf16 matmul as the user's choice where this oneDNN has one for
#             this CPU, and elsewhere end with exit 1 (an error, not a crash) saying why;
#   fast      (not a path) end with exit 1 naming UOE_BF16_GEMM and what it accepts.
set -uo pipefail
mode=$1
shift
command=("$@")
output=$(UOE_BF16_GEMM=$mode "${command[@]}" 2>&1)
status=$?
line=$(grep -m1 'precision bf16: ' <<<"$output")
fail() {
  echo "FAIL: $1 (exit $status) from: UOE_BF16_GEMM=$mode ${command[*]}"
  printf '%s\n' "--- output ---" "$output"
  exit 1
}
case $mode in
  emulated)
    (( status == 0 )) || fail "the command failed"
    [[ $line == *"bf16 GEMMs emulated"*"UOE_BF16_GEMM=emulated is the user's"* ]] || fail "no emulated start-up line"
    echo "$line" ;;
  onednn)
    if (( status == 0 )); then
      [[ $line == *"bf16 GEMMs through oneDNN"*"on bf16 inputs"*"UOE_BF16_GEMM=onednn is the user's"* ]] ||
        fail "no oneDNN start-up line"
      echo "$line"
    else
      (( status == 1 )) || fail "not a clean error exit"
      grep -q "UOE_BF16_GEMM=onednn: oneDNN .* cannot create a bf16 matmul" <<<"$output" || fail "no reason given"
      echo "oneDNN has no bf16 matmul on this CPU; the forced path was refused with:"
      grep -m1 "UOE_BF16_GEMM=onednn" <<<"$output"
    fi ;;
  *)
    (( status == 1 )) || fail "an unknown UOE_BF16_GEMM was not refused"
    grep -q "UOE_BF16_GEMM='$mode': expected onednn, emulated or auto" <<<"$output" || fail "no message naming it"
    grep -m1 "UOE_BF16_GEMM" <<<"$output" ;;
esac
echo PASS
