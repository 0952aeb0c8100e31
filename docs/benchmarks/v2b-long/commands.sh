#!/bin/sh
# Issue 32: the shipped weights at 50 and 100 steps on the fresh held-out set (bench/prompts/embedded_fresh.txt,
# seeds 10 11), the same flags as docs/benchmarks/v2b-28/commands.sh. Two lanes, one CPU thread each; every run
# is --resume, so running this script again after a stop continues where each run stopped.
#   sh docs/benchmarks/v2b-long/commands.sh        (about 3.5 h per lane on a 2-core CPU)
# The stored v2b-100-b was run on its own, sharded over both cores (the processes split the prompt x seed items;
# each item runs as in one process), in about an hour with its auto grid:
#   OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 -m bench --device cpu $COMMON \
#       --out runs/bench/v2b-100-b --steps 100 --methods none teacache-guarded magcache taylorseer seacache
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
COMMON="--prompts bench/prompts/embedded_fresh.txt --num-prompts 16 --seeds 10 11 --repeats 1 --warmup 1 --auto-grid 0.85 0.65 0.45 0.3 --no-lpips --no-progress --no-decision-cost --resume"
FIX="pool_size_stage1=128 pool_size_stage2=22"
run() {  # out, then the rest of the arguments
    out=$1; shift
    [ -f "runs/bench/$out/results.json" ] && return 0
    python -m bench $COMMON --out "runs/bench/$out" "$@" >> "runs/bench/$out.log" 2>&1
}
mkdir -p runs/bench
(
    run v2b-50 --steps 50 --methods none h2cache fbcache fbcache-guarded teacache teacache-guarded magcache taylorseer seacache --fix $FIX
    run v2b-100-b --steps 100 --methods none teacache-guarded magcache taylorseer seacache  # no --fix: none of them has pool sizes
) &
(
    run v2b-50-forecast --steps 50 --methods none h2cache-guarded-forecast --subjects h2cache-guarded-forecast --fix $FIX forecast_probe_factor=true
    run v2b-100-forecast --steps 100 --methods none h2cache-guarded-forecast --subjects h2cache-guarded-forecast --fix $FIX forecast_probe_factor=true
    run v2b-100-a --steps 100 --methods none h2cache fbcache fbcache-guarded teacache --fix $FIX
) &
wait
