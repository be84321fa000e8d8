#!/usr/bin/env bash
# A real Slurm: train under salloc and sbatch through launcher/uoe-launch's srun path, preempt,
# requeue and resume bitwise (docs/cluster.md, "Slurm").
#
#   test_slurm.sh BUILD_DIR
#
# Starts a one-node cluster (tests/slurm/slurm-cluster: munged, slurmctld, slurmd, torn down on any
# exit), then:
#  1. salloc -n 2 uoe-launch ...: the uninterrupted reference run (2 ranks, ep 2, pmix), to its end.
#  2. sbatch launcher/slurm/train.sbatch (the script users copy) with the same training; once it has
#     trained a few steps, `scancel --batch --signal=TERM` (a preemption's signal to the batch step):
#     the ranks checkpoint and the job ends with status 0 before its last step.
#  3. `scontrol requeue` (what a preempting scheduler or an administrator does): the job starts again
#     and resumes from that checkpoint (--resume auto); a few steps later `scancel --batch
#     --signal=USR1` (the time-limit warning, --signal=B:USR1@120): the ranks checkpoint and the
#     script requeues the job itself.
#  4. The third start resumes and trains to the end. Its final checkpoint must equal the reference's
#     bitwise (tests/cli/checkpoint_equal.py), and every train_loss logged and the final val_loss too.
# Exit 77 (skipped, with the reason) where Slurm, munge or root is missing.
set -euo pipefail

build=$(cd "${1:?usage: test_slurm.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster_sh=$root/tests/slurm/slurm-cluster
out=$build/tests/slurm
cluster=$out/cluster
python=${UOE_PYTHON:-python3}  # CMake passes its interpreter (Debian's, with h5py)

fail() {
  echo "FAIL: $*"
  for f in "$out"/ref.log "$out"/job.out "$cluster"/log/slurmctld.log "$cluster"/log/slurmd.log; do
    [[ -f $f ]] && { echo "---- last lines of $f"; tail -n 40 "$f"; }
  done
  exit 1
}

bash "$cluster_sh" stop "$cluster"  # one an earlier run may have left
rm -rf "$out"
mkdir -p "$out"

# Teardown on every exit: stop the daemons, then check none is left (and say so).
watchdog=''
cleanup() {
  local rc=$?
  trap - TERM
  [[ -n $watchdog ]] && pkill -P "$watchdog" sleep 2>/dev/null  # its sleep, which ends it
  bash "$cluster_sh" stop "$cluster" || true
  if ! bash "$cluster_sh" check "$cluster"; then
    echo "FAIL: daemons left running after the test"
    rc=1
  fi
  exit "$rc"
}

set +e
bash "$cluster_sh" start "$cluster"
rc=$?
set -e
if (( rc == 77 )); then
  echo "SKIPPED: no Slurm cluster can be started here (reason above)"
  exit 77
fi
trap cleanup EXIT
(( rc == 0 )) || fail "the test cluster did not start (status $rc)"
# A deadline below CTest's TIMEOUT (which kills without a teardown): past it, stop the cluster
# (which ends any Slurm command the test waits in) and fail. The CTest test slurm.no_daemons_left
# stops and checks it again after this test, however it ended.
deadline=${UOE_SLURM_TEST_DEADLINE:-270}
( sleep "$deadline" &&  # cleanup kills this sleep: then nothing more
  { echo "FAIL: the test ran past its $deadline s deadline: stopping the cluster"
    bash "$cluster_sh" stop "$cluster"
    kill -TERM $$; } ) &
watchdog=$!
trap 'fail "stopped at the deadline"' TERM
node=$(hostname -s)
eval "$(bash "$cluster_sh" env "$cluster")"
export UOE_BUILD_DIR=$build

# A small model; the simulated link's latency (5 ms a message, a few dozen messages a step) makes a
# step last over 0.1 s even on an idle machine, sleeping rather than computing, so that the signals
# land mid-run (the simulated link only delays: the results are the same bitwise). 20 steps, a
# checkpoint every 4.
steps=20
train=(--steps "$steps" --log-every 1 --eval-every 0 --eval-batches 1 --layers 1 --d-model 32 --d-ff 64
       --batch-size 2 --seq-len 16 --sim-link-gbps 10 --sim-link-latency-us 5000)
every=4

job_field() {  # job_field JOB FIELD: a field of `scontrol show job` (the record stays MinJobAge s)
  scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds
  local limit=$1 what=$2 t
  shift 2
  for (( t = 0; t < limit * 5; ++t )); do
    "$@" && return 0
    sleep 0.2
  done
  fail "waited $limit s for $what"
}

last_step() {  # the last train step in a metrics file (0 when none yet)
  [[ -s $1 ]] || { echo 0; return; }
  "$python" -c 'import json,sys
steps = [r["step"] for r in map(json.loads, open(sys.argv[1])) if "train_loss" in r]
print(steps[-1] if steps else 0)' "$1" 2>/dev/null || echo 0
}
trained_past() { (( $(last_step "$1") >= $2 )); }
job_state_is() { [[ $(job_field "$1" JobState) == "$2" ]]; }
job_restarts_are() { [[ $(job_field "$1" Restarts) == "$2" ]]; }
log_has() { grep -q -- "$2" "$1" 2>/dev/null; }
node_idle() { [[ $(sinfo -h -n "$node" -o %T 2>/dev/null) == idle ]]; }

# Waits until JOB has ended (a state other than pending, running, completing or requeued) and fails
# unless it COMPLETED with exit code 0.
wait_job_completed() {  # wait_job_completed SECONDS JOB
  local t state
  for (( t = 0; t < $1 * 5; ++t )); do
    state=$(job_field "$2" JobState)
    case $state in PENDING|RUNNING|COMPLETING|CONFIGURING|REQUEUE*|SUSPENDED|'') sleep 0.2; continue ;; esac
    [[ $state == COMPLETED ]] || fail "job $2 ended $state (exit code $(job_field "$2" ExitCode), reason $(job_field "$2" Reason))"
    [[ $(job_field "$2" ExitCode) == 0:0 ]] || fail "job $2 ended with exit code $(job_field "$2" ExitCode), expected 0:0"
    return 0
  done
  fail "waited $1 s for job $2 to end"
}

# Starts requeued JOB now: Slurm holds a requeued job back for about two minutes (its BeginTime).
# Once the node has cleaned up after the job's previous start (idle), lift that hold.
release() {  # release JOB
  wait_for 60 "the node to be idle after job $1's previous start" node_idle
  scontrol update JobId="$1" StartTime=now || fail "scontrol update JobId=$1 StartTime=now failed"
}

# ---- 1. salloc: the reference ------------------------------------------------------------------
cd "$root"
echo "== salloc -n 2: uoe-launch takes its srun path; the uninterrupted reference run"
salloc -n 2 --job-name=uoe-ref launcher/uoe-launch -n 2 --ep 2 -- \
  --checkpoint-dir "$out/ref/ckpt" --checkpoint-every "$every" --resume auto --metrics "$out/ref/metrics.jsonl" \
  "${train[@]}" > "$out/ref.log" 2>&1 || fail "the salloc run failed (exit $?)"
grep -q "^+ srun --ntasks=2 " "$out/ref.log" || fail "uoe-launch did not start srun inside salloc"
grep -q "^ranks: 2 (ep 2 × dp 1)" "$out/ref.log" || fail "the salloc run did not train on 2 ranks, ep 2"
grep -q "^done: $steps steps" "$out/ref.log" || fail "the salloc run did not train $steps steps"
ref_final=$(printf '%s/ref/ckpt/step_%08d' "$out" "$steps")
[[ -d $ref_final ]] || fail "no final checkpoint $ref_final"
echo "ok: reference trained $steps steps on 2 ranks under salloc"

# ---- 2. sbatch, preempted ------------------------------------------------------------------------
echo "== sbatch launcher/slurm/train.sbatch; scancel --batch --signal=TERM after step 3"
run=$out/run
job=$(UOE_CONFIG='' UOE_RUN_DIR=$run UOE_CHECKPOINT_EVERY=$every \
      sbatch --parsable --job-name=uoe-test --output="$out/job.out" launcher/slurm/train.sbatch "${train[@]}") ||
  fail "sbatch refused the job"
job=${job%%;*}
echo "job $job submitted"
[[ $(job_field "$job" Requeue) == 1 ]] || fail "job $job is not requeueable (train.sbatch has #SBATCH --requeue)"
wait_for 90 "job $job to train 3 steps" trained_past "$run/metrics.jsonl" 3
grep -q "^+ srun --ntasks=2 " "$out/job.out" || fail "uoe-launch did not start srun inside the batch job"
scancel --batch --signal=TERM "$job"
wait_job_completed 60 "$job"
stop1=$(sed -n 's/^stop signal received: finishing at step \([0-9]*\) .*/\1/p' "$out/job.out" | tail -n 1)
[[ -n $stop1 ]] || fail "the ranks did not report the stop signal"
(( stop1 < steps )) || fail "the job reached its last step before the signal; nothing left to resume"
log_has "$out/job.out" "^preempted: checkpoint .*step_$(printf %08d "$stop1") committed" ||
  fail "no checkpoint of step $stop1 committed on preemption"
echo "ok: preempted at step $stop1 of $steps with a checkpoint, job state COMPLETED 0:0"

# ---- 3. scontrol requeue, resumed, then the time-limit warning ------------------------------------
echo "== scontrol requeue $job; then scancel --batch --signal=USR1 (time-limit warning)"
scontrol requeue "$job" || fail "scontrol requeue $job failed"
wait_for 30 "job $job to be requeued (Restarts=1)" job_restarts_are "$job" 1
release "$job"
wait_for 60 "the requeued job to train past step $stop1" trained_past "$run/metrics.jsonl" $(( stop1 + 1 ))
scancel --batch --signal=USR1 "$job"
wait_for 60 "job $job to requeue itself after SIGUSR1 (Restarts=2)" job_restarts_are "$job" 2
stop2=$(sed -n 's/^stop signal received: finishing at step \([0-9]*\) .*/\1/p' "$out/job.out" | tail -n 1)
(( stop2 > stop1 && stop2 < steps )) || fail "second stop at step '$stop2', expected between $stop1 and $steps"
log_has "$out/job.out" "time limit near: requeueing job $job" || fail "train.sbatch did not requeue itself"
echo "ok: resumed, stopped again at step $stop2, requeued by train.sbatch"

# ---- 4. to the end; bitwise against the reference ------------------------------------------------
wait_for 30 "job $job to be pending again" job_state_is "$job" PENDING
release "$job"
wait_job_completed 90 "$job"
starts=$(grep -c "^train.sbatch: job $job start " "$out/job.out")
(( starts == 3 )) || fail "job $job started $starts times, expected 3"
for s in "$stop1" "$stop2"; do
  log_has "$out/job.out" "^resumed from .*step_$(printf %08d "$s"): step $s " || fail "no start resumed from step $s"
done
log_has "$out/job.out" "^done: $steps steps" || fail "the last start did not finish the $steps steps"
final=$(printf '%s/ckpt/step_%08d' "$run" "$steps")
"$python" "$root/tests/cli/checkpoint_equal.py" "$ref_final" "$final" ||
  fail "the preempted and requeued job's final checkpoint differs from the uninterrupted run's"
"$python" - "$out/ref/metrics.jsonl" "$run/metrics.jsonl" <<'EOF' || fail "the metrics differ from the uninterrupted run's"
import json, sys
def load(path):
    rows = [json.loads(line) for line in open(path)]
    # a resumed start re-logs the steps after its checkpoint; the later lines count
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}, [r["val_loss"] for r in rows if r.get("final")]
(ref, ref_final), (run, run_final) = load(sys.argv[1]), load(sys.argv[2])
if sorted(run) != sorted(ref):
    sys.exit(f"logged steps differ: {sorted(set(ref) ^ set(run))}")
bad = [s for s in ref if ref[s] != run[s]]
if bad:
    sys.exit(f"train_loss differs at steps {bad[:5]}: {run[bad[0]]!r} vs {ref[bad[0]]!r}")
if not ref_final or run_final[-1:] != ref_final:
    sys.exit(f"final val_loss {run_final[-1:]} vs {ref_final}")
print(f"ok: {len(ref)} train losses and the final val_loss {ref_final[0]!r} equal the reference bitwise")
EOF
echo "PASS: trained under salloc and sbatch through srun, preempted at step $stop1 and $stop2, requeued twice, ended bitwise at the uninterrupted run's state"
