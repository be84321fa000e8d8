#!/usr/bin/env bash
# blas_kernels.sh MODE CMD [ARGS...]
# The BLAS kernel choice at start-up (runtime/cpu_features.hpp), end to end. CMD must succeed and
# print its "cpu:" line, which must say:
#   simulated  the library's pick is pretended to be Prescott (UOE_TEST_BLAS_CORENAME): the process
#              re-executed itself and now runs the kernels for its ISA (Haswell, SkylakeX or
#              Cooperlake), named in OPENBLAS_CORETYPE and reported by OpenBLAS itself. On a CPU
#              without AVX2 + FMA the pick stands; where the environment already sets
#              OPENBLAS_CORETYPE (some machines do, for numpy) it is the user's and respected.
#   user       OPENBLAS_CORETYPE set by the user (the environment's own, else Prescott, which every
#              x86-64 CPU runs) is respected, named, and is what runs.
set -uo pipefail
mode=$1
shift
export UOE_TEST_BLAS_CORENAME=Prescott
user=${OPENBLAS_CORETYPE:-}
ours=0  # whether this script set OPENBLAS_CORETYPE (then OpenBLAS must run it: Prescott runs anywhere)
if [[ $mode == user && -z $user ]]; then
  user=Prescott
  ours=1
  export OPENBLAS_CORETYPE=$user
fi
command=("$@")
output=$("${command[@]}" 2>&1)
status=$?
line=$(grep -m1 'cpu: ' <<<"$output")
fail() {
  echo "FAIL: $1 (exit $status) from: ${command[*]}"
  printf '%s\n' "--- output ---" "$output"
  exit 1
}
(( status == 0 )) || fail "the command failed"
[[ -n $line ]] || fail "no 'cpu:' line"
echo "$line"
if [[ -n $user ]]; then
  [[ $line == *"OPENBLAS_CORETYPE=$user is the user's: respected"* ]] || fail "the user's OPENBLAS_CORETYPE=$user not respected"
  shopt -s nocasematch
  # The environment's own value is the machine's business (OpenBLAS may map it); ours must run.
  (( ! ours )) || [[ $line == *"OpenBLAS $user kernels"* ]] || fail "OpenBLAS does not run the user's $user kernels"
elif grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  re='OpenBLAS ([A-Za-z]+) kernels, chosen by uoe \(re-executed with OPENBLAS_CORETYPE=([A-Za-z]+)\)'
  [[ $line =~ $re ]] || fail "no re-exec to the ISA's kernels"
  [[ ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]] || fail "asked for ${BASH_REMATCH[2]}, OpenBLAS runs ${BASH_REMATCH[1]}"
  [[ ${BASH_REMATCH[2]} =~ ^(Haswell|SkylakeX|Cooperlake)$ ]] || fail "unexpected target ${BASH_REMATCH[2]}"
  [[ $line == *"[pick simulated by UOE_TEST_BLAS_CORENAME]"* ]] || fail "the simulation is not said"
  # The re-executed process keeps its name (ps, pkill and bench/soak find ranks by it): run the
  # command once more (one process only) and read /proc/PID/comm once the re-exec has happened
  # (the guard variable is in the new image's environment).
  if [[ $(basename "${command[0]}") == uoe-* ]]; then
    "${command[@]}" >/dev/null 2>&1 &
    pid=$!
    name=""
    for _ in $(seq 1000); do
      if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -q '^UOE_BLAS_REEXEC='; then
        name=$(cat /proc/$pid/comm 2>/dev/null)
        break
      fi
      kill -0 $pid 2>/dev/null || break
      sleep 0.005
    done
    wait $pid
    [[ -n $name ]] || fail "could not see the re-executed process (ended too soon?)"
    [[ $name == "$(basename "${command[0]}" | cut -c1-15)" ]] || fail "the re-executed process is named '$name', not $(basename "${command[0]}")"
    echo "re-executed process name: $name"
  fi
else
  [[ $line == *"no AVX2 + FMA on this CPU"* ]] || fail "a CPU without AVX2 + FMA should keep the library's pick"
fi
echo "PASS"
