#!/usr/bin/env bash
# Runs named GPU steps on the device machine, each under its own time limit, logging to $OUT/<step>.log.
#   bash bench/device.sh tests dit vae linear attention pipeline ...
set -u
source .devwhl/activate.sh
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
step() { # name seconds command...
  local name=$1 secs=$2; shift 2
  echo "=== $name (limit ${secs}s): $*"
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - t0 ))s"; tail -n "${TAIL:-25}" "$OUT/$name.log"
}
for s in "$@"; do
  case $s in
    tests) step tests 300 python -m pytest -q -m gpu -x --no-header -p no:cacheprovider tests ;;
    tests-sla) step tests-sla 240 python -m pytest -q -m gpu --no-header -p no:cacheprovider tests/test_sla.py ;;
    tests-nosla) step tests-nosla 300 python -m pytest -q -m gpu --no-header -p no:cacheprovider tests --ignore=tests/test_sla.py ;;
    dit) step dit 240 python bench/bench_dit.py --model 1.3b --res 480p --frames 81 --attention dense ;;
    dit-sla) step dit-sla 240 python bench/bench_dit.py --model 1.3b --res 480p --frames 81 --attention sla ;;
    vae) step vae 240 python bench/bench_vae.py ;;
    vae-passes) step vae-passes 150 python bench/bench_vae.py --norms --no-diffusers ;;
    vae-layers) step vae-layers 150 python bench/experiments/vae_layer_times.py ;;
    vae-norm-variants) step vae-norm-variants 150 python bench/experiments/vae_norm_variants.py ;;
    linear) step linear 180 python bench/bench_linear.py ;;
    norms) step norms 150 python bench/bench_norms.py ;;
    norms14) step norms14 170 python bench/bench_norms.py --shapes 1.3b,14b --budget-s 140 ;;
    attention) step attention 240 python bench/bench_attention.py ;;
    cross) step cross 150 python bench/bench_cross_attention.py ;;
    cross-sweep) step cross-sweep 200 python bench/experiments/cross_attention_sweep.py --prompt-tokens 40 --rounds 6 ;;
    collapse-error) step collapse-error 150 python bench/experiments/collapse_error.py --prompt-tokens 40 ;;
    tests-collapse) step tests-collapse 150 python -m pytest -q -m gpu --no-header -p no:cacheprovider tests/test_cross_attention.py tests/test_pipeline.py ;;
    forward-prompt) step forward-prompt 240 python bench/bench_forward.py --variants fp8+sla,fp8+sla+graph --no-diffusers --prompt-tokens 100 ;;
    pipeline) step pipeline 300 python bench/bench_pipeline.py --attention sla --quant fp8 --json "$OUT/pipeline.json" ;;
    pipeline-dense) step pipeline-dense 300 python bench/bench_pipeline.py --attention dense --quant none --json "$OUT/pipeline_dense.json" ;;
    forward-fast) step forward-fast 200 python bench/bench_forward.py --variants fp8+sla,fp8+sla+graph --no-diffusers --iters 5 ;;
    forward) step forward 480 python bench/bench_forward.py --gemms --json "$OUT/forward.json" ;;  # the table
    i2v) step i2v 420 python bench/bench_pipeline.py --model wan2.2-i2v-a14b --resolution 720p --attention sla --quant fp8 --no-base ;;
    forward14) step forward14 480 python bench/bench_forward.py --model 14b --res 720p --variants bf16,fp8,fp8+sla --json "$OUT/forward14.json" ;;
    clocks) step clocks 120 python bench/experiments/clocks_under_load.py ;;
    forward14-final) step forward14-final 300 python bench/bench_forward.py --model 14b --res 720p --variants fp8+sla --iters 3 --json "$OUT/forward14.json" ;;
    tests-fp8) step tests-fp8 300 python -m pytest -q -m gpu --no-header -p no:cacheprovider tests/test_dit_fast_path.py tests/test_fp8_linear.py ;;
    forward14-keep) step forward14-keep 480 python bench/bench_forward.py --model 14b --res 720p --variants fp8+sla,fp8-all+sla --no-diffusers --iters 3 --json "$OUT/forward14.json" ;;
    tests-all) step tests-all 300 python -m pytest -q -m gpu --no-header -p no:cacheprovider tests ;;
    tests-gpu) step tests-gpu 400 python -m pytest -q -m gpu --no-header -p no:cacheprovider tests --ignore=tests/test_sla.py ;;
    scaling) step scaling 540 python bench/bench_scaling.py --rows 16 --json "$OUT/scaling.json" ;;
    scaling-tiny) step scaling-tiny 300 python bench/bench_scaling.py --rows 8 --model tiny-t2v ;;
    *) echo "unknown step $s" ;;
  esac
done
