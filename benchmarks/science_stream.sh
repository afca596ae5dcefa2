#!/usr/bin/env bash
# Issue 25's runs on the real model (docs/results.md), one after another in one workdir, each
# resuming from the pipeline's cache: a stopped stream, or one started again in a later session,
# redoes only the stages that had not finished. A line that exits 0 leaves LOGS/<name>.done and is
# skipped from then on; one that fails is logged and the stream goes on to the next; a stopped
# one (exit 130 / 143) ends the stream.
#
#   benchmarks/science_stream.sh WORKDIR [NAME ...]
#
# WORKDIR/src is a clone of this checkout (made, with `make setup`, when missing, and brought up to
# this checkout's commit otherwise; its .eto/ holds the cache and the MLflow store), WORKDIR/logs the logs and the --json results. With NAMEs, only
# those lines run, in the stream's order. `--list` prints the lines. The machine has 2 cores: run
# one stream at a time, and pause it (kill -STOP / -CONT on its `eto` process) for side-by-side
# benchmarks.
set -uo pipefail

TIDY="--config recipes/smollm-tidy.yaml"
DEV="--set selection.split=train_holdout --set selection.tasks=40"
ONE="--iterations 1 --set evaluate_base=false $DEV"
SAMPLED="--set pairs.samples_per_task=4 --set explore.temperature=0.7"  # 4 samples per task
K4="$SAMPLED --set pairs.self_pairs=true"
SWEEP="benchmarks/dpo_sweep.py $TIDY --state .eto --dev 40 --drift --configs"

# name | command run in WORKDIR/src (eto = .venv/bin/eto, python = .venv/bin/python)
LINES=(
  "tidy-eto-s0|eto run $TIDY --seed 0 $ONE"
  "tidy-step-s0|eto run $TIDY --seed 0 $ONE --set pairs.level=both"
  "tidy-k4-s0|eto run $TIDY --seed 0 $ONE $K4"
  # the other three environments' SFT and ETO (seed 0) before tidy's remaining methods
  "alfworld-pick-s0|eto run --config recipes/smollm-alfworld-pick.yaml --seed 0"
  "webshop-s0|eto run --config recipes/smollm-webshop.yaml --seed 0"
  "sciworld-s0|eto run --config recipes/smollm-sciworld.yaml --seed 0"
  "tidy-eto-no-sft-s0|eto baseline eto-no-sft $TIDY --seed 0 --iterations 1 $SAMPLED"
  "tidy-rft-eto-s0|eto baseline rft-eto $TIDY --seed 0 --iterations 1 $SAMPLED"
  "tidy-sweep-sftterm-s0|python $SWEEP '{beta: 0.1, learning_rate: 5.0e-5}' '{beta: 0.1, learning_rate: 2.0e-4, sft_weight: 1.0}'"
  "tidy-s1|eto run $TIDY --seed 1 $DEV"
  "tidy-rft-s1|eto baseline rft $TIDY --seed 1"
  "tidy-bon-s1|eto baseline best-of-n $TIDY --seed 1 --set baselines.best_of_n=4"
  "tidy-s2|eto run $TIDY --seed 2 $DEV"
  "tidy-rft-s2|eto baseline rft $TIDY --seed 2"
  "tidy-bon-s2|eto baseline best-of-n $TIDY --seed 2 --set baselines.best_of_n=4"
  "tidy-rft-s0|eto baseline rft $TIDY --seed 0"
  "tidy-bon-s0|eto baseline best-of-n $TIDY --seed 0 --set baselines.best_of_n=4"
  # claim 4's third iteration (iterations 1-2 come from the cache)
  "tidy-iter3-s0|eto run $TIDY --seed 0 --iterations 3 $DEV"
  "tidy-iter3-s1|eto run $TIDY --seed 1 --iterations 3 $DEV"
  "tidy-iter3-s2|eto run $TIDY --seed 2 --iterations 3 $DEV"
)

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${LINES[@]}" | sed 's/|/: /'
  exit 0
fi
WORKDIR=${1:?usage: benchmarks/science_stream.sh WORKDIR [NAME ...] (or --list)}
shift
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORKDIR/logs"
LOGS=$(cd "$WORKDIR/logs" && pwd)
if [[ ! -d "$WORKDIR/src/.git" ]]; then
  git clone -q "$HERE" "$WORKDIR/src" || exit 1
else  # this checkout's newer commits (faster rollouts, fixes); the cache keys say what they change
  git -C "$WORKDIR/src" pull -q --ff-only "$HERE" HEAD || echo "could not fast-forward $WORKDIR/src; running it as it is"
fi
# The recipes name the shared data as ../shared/data (ALFWorld's game files), relative to the clone.
if [[ ! -e "$WORKDIR/shared" && -d "$HERE/../shared" ]]; then
  ln -s "$(cd "$HERE/../shared" && pwd)" "$WORKDIR/shared"
fi
cd "$WORKDIR/src" || exit 1
if [[ ! -x .venv/bin/eto ]]; then
  make setup > "$LOGS/setup.log" 2>&1 || { echo "make setup failed: $LOGS/setup.log"; exit 1; }
fi

for line in "${LINES[@]}"; do
  name=${line%%|*}
  command=${line#*|}
  if [[ $# -gt 0 ]] && ! printf '%s\n' "$@" | grep -qx "$name"; then
    continue
  fi
  [[ -e "$LOGS/$name.done" ]] && continue
  case $command in
    eto\ *) command=".venv/bin/$command --json $LOGS/$name.json" ;;
    python\ *) command=".venv/bin/$command" ;;
  esac
  echo "$(date -u +%FT%TZ) $name: $command"
  start=$(date +%s)
  bash -c "$command" > "$LOGS/$name.log" 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  if [[ $rc -eq 0 ]]; then
    echo "$elapsed s" > "$LOGS/$name.done"
    echo "$(date -u +%FT%TZ) $name: done in $elapsed s"
  elif [[ $rc -eq 130 || $rc -eq 143 ]]; then  # the line was stopped (Ctrl-C, SIGTERM): so is the stream
    echo "$(date -u +%FT%TZ) $name: stopped; the same command resumes it"
    exit "$rc"
  else
    echo "$(date -u +%FT%TZ) $name: failed (exit $rc), see $LOGS/$name.log"
  fi
done
