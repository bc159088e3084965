#!/bin/bash
# Issue 15's 2 x 2 comparison: Meta-CPO with inner x outer metric in {identity, fisher}^2 and CPO at the
# same env steps, car-circle-hazard and point-button, seeds 0 and 1; 3 tasks, K = 2, 3 episodes per batch,
# 40 meta-iterations (CPO: 120 iterations = the same env steps), each run meta-tested (5 unseen test tasks,
# 5 adaptation steps, the family's test limit) into test.json. Resumable: run it again to continue
# unfinished runs from their checkpoints and to meta-test finished ones; two runs at a time.
#     bash results/metric-2x2/run.sh            (from the repository root)
cd "$(dirname "$0")/../.." || exit 1
ROOT=results/metric-2x2
PY=${PY:-.venv/bin/python}
job() {  # family seed name
    local fam=$1 seed=$2 name=$3 out=$ROOT/$1/$3-s$2 args its
    case $name in
        cpo) args="--algo cpo"; its=120 ;;
        meta-cpo-*) IFS=- read -r _ _ inner outer <<< "$name"
                    args="--algo meta-cpo --local-steps 2 --inner-metric $inner --outer-metric $outer"; its=40 ;;
    esac
    [ -f "$out/test.json" ] && return
    mkdir -p "$ROOT/$fam"
    local done=$($PY -c "import numpy as np, sys; print(int(np.load(sys.argv[1])['iteration']))" \
                 "$out/checkpoint.npz" 2>/dev/null || echo 0)
    if [ "$done" -ge "$its" ]; then :
    elif [ -f "$out/checkpoint.npz" ]; then
        $PY cli.py train "$fam" --out "$out" --iterations $its --resume --workers 1 >> "$out.log" 2>&1 || return
    else
        $PY cli.py train "$fam" $args --tasks 3 --episodes 3 --seed "$seed" --iterations $its \
            --workers 1 --out "$out" >> "$out.log" 2>&1 || return
    fi
    [ -f "$out/test.json" ] || { $PY cli.py test "$fam" --checkpoint "$out/checkpoint.npz" --workers 1 --json \
        > "$out/test.json.tmp" 2>> "$out.log" && mv "$out/test.json.tmp" "$out/test.json"; }
}
export -f job; export ROOT PY
for seed in 0 1; do for fam in car-circle-hazard point-button; do
    for name in meta-cpo-fisher-fisher meta-cpo-fisher-identity meta-cpo-identity-fisher meta-cpo-identity-identity cpo; do
        echo "$fam $seed $name"
    done
done; done | xargs -P 2 -L 1 bash -c 'job "$@"' _
