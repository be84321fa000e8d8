#!/usr/bin/env bash
# test_launch.sh BUILD_DIR
# The launcher's command construction (dry runs: root and non-root, binding, oversubscription,
# threads per rank, hosts, hostfile, Slurm with a fake srun), its refusals (exit status 2 and a
# message naming the problem), and one real 2-rank training run of a few steps through it.
set -uo pipefail

if (( $# != 1 )); then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
launch=$here/../../launcher/uoe-launch
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0 checks=0

fail() {
  echo "FAIL: $*"
  failures=$(( failures + 1 ))
}

# expect_cmd NAME "ENV=.. ..." "LAUNCH ARGS" MUST... -- MUST_NOT...
# Runs a dry run and checks that the one printed line contains each MUST and no MUST_NOT.
expect_cmd() {
  local name=$1 envs=$2 args=$3
  shift 3
  local out rc
  # shellcheck disable=SC2086  # envs and args are word lists on purpose
  out=$(env $envs bash "$launch" --build "$build" $args 2>"$tmp/err")
  rc=$?
  checks=$(( checks + 1 ))
  if (( rc != 0 )); then
    fail "$name: exit $rc: $(cat "$tmp/err")"
    return
  fi
  if [[ $(printf '%s\n' "$out" | wc -l) -ne 1 ]]; then
    fail "$name: expected one line, got: $out"
    return
  fi
  local negate=0 s
  for s in "$@"; do
    if [[ $s == -- ]]; then negate=1; continue; fi
    if (( ! negate )) && [[ $out != *"$s"* ]]; then fail "$name: missing '$s' in: $out"; return; fi
    if (( negate )) && [[ $out == *"$s"* ]]; then fail "$name: unexpected '$s' in: $out"; return; fi
  done
  echo "ok: $name: $out"
}

# expect_refusal NAME "ENV=.." REGEX ARGS...: exit status 2 and stderr matching REGEX.
expect_refusal() {
  local name=$1 envs=$2 regex=$3
  shift 3
  local err rc
  # shellcheck disable=SC2086
  err=$(env $envs bash "$launch" "$@" 2>&1 >/dev/null)
  rc=$?
  checks=$(( checks + 1 ))
  if (( rc != 2 )); then fail "$name: exit $rc, expected 2 (stderr: $err)"; return; fi
  if ! [[ $err =~ $regex ]]; then fail "$name: message '$err' does not match /$regex/"; return; fi
  echo "ok: $name refused: $err"
}

bin=$build/bin/uoe-train
# A fake srun (dry runs only look it up) and a PATH without any srun.
mkdir -p "$tmp/fakebin"
printf '#!/bin/sh\necho fake srun "$@"\n' > "$tmp/fakebin/srun"
chmod +x "$tmp/fakebin/srun"
slurm="SLURM_JOB_ID=4242 SLURM_JOB_NUM_NODES=2 SLURM_CPUS_ON_NODE=8 PATH=$tmp/fakebin:$PATH"
printf 'nodeA slots=2\n# a comment\nnodeB slots=2 max_slots=4\n' > "$tmp/hostfile"
printf 'steps = 3\nep = 3\n' > "$tmp/ep3.ini"

# --- command construction -----------------------------------------------------------------------
expect_cmd "root, one host, a core per rank" "UOE_LAUNCH_EUID=0" "-n 2 --cores 2 --ep 2 --dry-run -- --steps 3" \
  "mpirun -np 2 --allow-run-as-root" "--bind-to core --map-by core" \
  "-x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1" "$bin --steps 3 --ep 2" -- "--oversubscribe" "srun"
# --device cuda (on the command line or in the config) starts the GPU build, uoe-train-cuda; without
# that build (UOE_CUDA=OFF) the launcher says so.
mkdir -p "$tmp/fakebuild/bin"
printf '#!/bin/sh\n' > "$tmp/fakebuild/bin/uoe-train"
cp "$tmp/fakebuild/bin/uoe-train" "$tmp/fakebuild/bin/uoe-train-cuda"
chmod +x "$tmp/fakebuild/bin/uoe-train" "$tmp/fakebuild/bin/uoe-train-cuda"
printf 'device = cuda\n' > "$tmp/cuda.ini"
expect_cmd "--device cuda: the GPU build" "UOE_LAUNCH_EUID=1000" \
  "-n 2 --cores 2 --build $tmp/fakebuild --dry-run -- --device cuda --steps 3" "bin/uoe-train-cuda --device cuda"
expect_cmd "device = cuda in the config: the GPU build" "UOE_LAUNCH_EUID=1000" \
  "-n 2 --cores 2 --build $tmp/fakebuild --dry-run -- --config $tmp/cuda.ini" "bin/uoe-train-cuda --config"
expect_cmd "--device cpu overrides the config" "UOE_LAUNCH_EUID=1000" \
  "-n 2 --cores 2 --build $tmp/fakebuild --dry-run -- --config $tmp/cuda.ini --device cpu" "bin/uoe-train --config" -- \
  "uoe-train-cuda"
rm "$tmp/fakebuild/bin/uoe-train-cuda"
expect_refusal "--device cuda without the GPU build" "UOE_LAUNCH_EUID=1000" "uoe-train-cuda.*nvcc" \
  -n 2 --build "$tmp/fakebuild" --dry-run -- --device cuda
expect_cmd "non-root" "UOE_LAUNCH_EUID=1000" "-n 2 --cores 2 --dry-run" \
  "mpirun -np 2 --bind-to core" -- "--allow-run-as-root" "--ep"
expect_cmd "oversubscribed" "UOE_LAUNCH_EUID=1000" "-n 8 --cores 2 --ep 4 --dry-run" \
  "mpirun -np 8 --oversubscribe -x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1" "--ep 4" -- "--bind-to" "PE="
expect_cmd "one rank, all cores" "UOE_LAUNCH_EUID=1000" "-n 1 --cores 4 --dry-run" \
  "--map-by slot:PE=4 --bind-to core" "OPENBLAS_NUM_THREADS=4" "OMP_NUM_THREADS=4" -- "--oversubscribe"
expect_cmd "cores divided among ranks" "UOE_LAUNCH_EUID=1000" "-n 3 --cores 8 --dry-run" \
  "--map-by slot:PE=2 --bind-to core" "OPENBLAS_NUM_THREADS=2"
expect_cmd "hosts" "UOE_LAUNCH_EUID=1000" "-n 4 --cores 8 --hosts nodeA:2,nodeB:2 --ep 2 --dry-run" \
  "mpirun -np 4 --host nodeA:2,nodeB:2" "OPENBLAS_NUM_THREADS=4" "--ep 2" -- "--bind-to" "--oversubscribe"
expect_cmd "hostfile" "UOE_LAUNCH_EUID=1000" "-n 4 --cores 4 --hostfile $tmp/hostfile --dry-run" \
  "--hostfile $tmp/hostfile" "OPENBLAS_NUM_THREADS=2" -- "--host " "--bind-to"
expect_cmd "this host over its cores in a host list" "UOE_LAUNCH_EUID=1000" "-n 4 --cores 2 --hosts localhost:4 --dry-run" \
  "--host localhost:4 --oversubscribe"
expect_cmd "Slurm: srun, threads from the allocation" "$slurm" "-n 4 --ep 2 --dry-run -- --steps 3" \
  "srun --ntasks=4 --cpus-per-task=4 --cpu-bind=cores --kill-on-bad-exit=1" \
  "--export=ALL,OPENBLAS_NUM_THREADS=4,OMP_NUM_THREADS=4" "$bin --steps 3 --ep 2" -- "mpirun"
expect_cmd "Slurm: --cpus-per-task given to the job" "$slurm SLURM_CPUS_PER_TASK=3" "-n 4 --dry-run" \
  "--cpus-per-task=3" "OMP_NUM_THREADS=3"
expect_cmd "Slurm: more tasks than CPUs" "$slurm" "-n 32 --dry-run" \
  "srun --ntasks=32 --overcommit" "OPENBLAS_NUM_THREADS=1" -- "--cpus-per-task"
expect_cmd "Slurm, mpirun asked for" "$slurm UOE_LAUNCH_EUID=1000" "-n 2 --cores 2 --launcher mpirun --dry-run" \
  "mpirun -np 2" -- "srun"
expect_cmd "shell quoting" "UOE_LAUNCH_EUID=1000" "-n 1 --cores 1 --dry-run -- --data a.txt --metrics it's.jsonl" \
  "--metrics 'it'\\''s.jsonl'"
expect_cmd "extra launcher words" "UOE_LAUNCH_EUID=1000" "-n 2 --cores 2 --dry-run --launcher-args --mca=x" \
  "UOE_PROGRESS=plain --mca=x $bin"

# Not a dry run under Slurm: the (fake) srun runs with the command line printed.
checks=$(( checks + 1 ))
# shellcheck disable=SC2086  # $slurm is a list of VAR=value words
out=$(env $slurm bash "$launch" -n 2 --build "$build" -- --steps 3 2>&1)
if [[ $? -eq 0 && $out == *"+ srun --ntasks=2"* && $out == *"fake srun --ntasks=2"*"$bin --steps 3"* ]]; then
  echo "ok: Slurm run executes srun"
else
  fail "Slurm run: $out"
fi

# --- refusals: exit 2 with a message ----------------------------------------------------------
expect_refusal "no -n" "" "-n RANKS is required" --build "$build" --dry-run
expect_refusal "-n 0" "" "-n 0: expected a whole number" -n 0 --build "$build" --dry-run
expect_refusal "-n abc" "" "-n abc" -n abc --build "$build" --dry-run
expect_refusal "ep not dividing ranks" "" "--ep 3 does not divide -n 4" -n 4 --ep 3 --build "$build" --dry-run
expect_refusal "hostfile and hosts" "" "--hostfile or --hosts, not both" -n 2 --hostfile "$tmp/hostfile" --hosts a:2 --build "$build" --dry-run
expect_refusal "too few slots" "" "provide 3 slots \\(a:1, b:2\\) but -n 4" -n 4 --hosts a:1,b:2 --build "$build" --dry-run
expect_refusal "too few hostfile slots" "" "provide 4 slots.*-n 6" -n 6 --hostfile "$tmp/hostfile" --build "$build" --dry-run
expect_refusal "--ep after --" "" "--ep is given after --" -n 2 --build "$build" --dry-run -- --steps 3 --ep 2
expect_refusal "--ep= after --" "" "--ep is given after --" -n 2 --build "$build" --dry-run -- --ep=2
expect_refusal "config ep not dividing" "" "ep = 3 in .*ep3.ini does not divide -n 2" -n 2 --build "$build" --dry-run -- --config "$tmp/ep3.ini"
expect_refusal "missing binary" "" "uoe-train not found at /nonexistent/build/bin/uoe-train: build it" -n 2 --build /nonexistent/build --dry-run
expect_refusal "unknown option" "" "unknown option '--bogus'" -n 2 --bogus --build "$build"
expect_refusal "stray argument" "" "unexpected argument 'steps'" -n 2 steps --build "$build"
expect_refusal "hosts under Slurm" "$slurm" "for mpirun; under Slurm" -n 2 --hosts a:2 --build "$build" --dry-run
expect_refusal "srun missing under Slurm" "$slurm UOE_SRUN=/nonexistent/srun" "srun not found" -n 2 --build "$build"
expect_refusal "bad --hosts entry" "" "--hosts entry 'a:x'" -n 2 --hosts a:x --build "$build" --dry-run

# --- a real run: 2 ranks, expert-parallel, a few steps ----------------------------------------
checks=$(( checks + 1 ))
metrics=$tmp/run.jsonl
if bash "$launch" -n 2 --ep 2 --build "$build" -- --steps 4 --log-every 2 --eval-batches 1 --layers 1 \
     --d-model 32 --d-ff 64 --batch-size 4 --seq-len 32 --metrics "$metrics" > "$tmp/run.log" 2>&1; then
  if grep -q '"final":true' "$metrics" && grep -q 'ranks: 2 (ep 2' "$tmp/run.log" && grep -q '^+ mpirun' "$tmp/run.log"; then
    echo "ok: real 2-rank run through the launcher"
  else
    fail "real run: no final metrics line, or not 2 ranks with ep 2:"
    cat "$tmp/run.log"
  fi
else
  fail "real run exited non-zero:"
  cat "$tmp/run.log"
fi

echo "$(( checks - failures ))/$checks launcher checks passed"
(( failures == 0 ))
