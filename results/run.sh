#!/usr/bin/env bash
# The experiments of docs/results.md. For FAMILY: train each algorithm for each
# seed at the same environment-step budget (CPO / TRPO run 3x the iterations of
# the meta algorithms: theirs collect one batch per task, Meta-CPO's K + 1 = 3),
# then meta-test on 5 unseen test tasks with 5 adaptation steps. Two runs at a
# time (2 cores). Existing runs are extended with --resume (the same numbers as
# one long run).
#
#   results/run.sh FAMILY META_ITERATIONS EPISODES "ALGOS" "SEEDS"
#   e.g. results/run.sh point-circle 120 2 "meta-cpo meta-trpo cpo" "0 1"
set -euo pipefail
cd "$(dirname "$0")/.."
FAMILY=$1 META_ITS=$2 EPISODES=$3 ALGOS=$4 SEEDS=$5
PY=.venv/bin/python
OUT=results/$FAMILY
SMALL="--tasks 3 --local-steps 2 --episodes $EPISODES --workers 1"
mkdir -p "$OUT"
run() {  # algo seed
  local its=$META_ITS
  case $1 in cpo|trpo) its=$((3 * META_ITS));; esac
  local dir=$OUT/$1-s$2
  if [ ! -f "$dir/checkpoint.npz" ]; then
    $PY cli.py train "$FAMILY" --algo "$1" --iterations $its --seed "$2" $SMALL --out "$dir" >> "$dir.log" 2>&1
  elif [ "$(grep -c . "$dir/metrics.jsonl")" -lt "$its" ]; then   # --resume: the stored settings
    $PY cli.py train "$FAMILY" --resume --iterations $its --out "$dir" >> "$dir.log" 2>&1
  fi
  $PY cli.py test "$FAMILY" --checkpoint "$OUT/$1-s$2/checkpoint.npz" --adapt-steps 5 --tasks 5 \
      --episodes "$EPISODES" --workers 1 --json > "$OUT/$1-s$2/test.json.tmp"
  mv "$OUT/$1-s$2/test.json.tmp" "$OUT/$1-s$2/test.json"
}
jobs=()
for algo in $ALGOS; do for seed in $SEEDS; do jobs+=("$algo $seed"); done; done
for ((i = 0; i < ${#jobs[@]}; i += 2)); do
  run ${jobs[i]} &
  [ $((i + 1)) -lt ${#jobs[@]} ] && run ${jobs[i + 1]} &
  wait
done
