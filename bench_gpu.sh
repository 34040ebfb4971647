#!/usr/bin/env bash
# Every GPU speed figure in one run (under 10 minutes on one H100/H200): training and sampling
# throughput of Diff-AE and PDAE at toy32 and ffhq128, float32 against bf16 autocast, eager against
# torch.compile, with FLOP/s and peak memory. JSON rows land in $OUT (default runs/bench_gpu).
#   bash bench_gpu.sh                 # on the GPU machine
#   BENCH_TINY=1 bash bench_gpu.sh    # the same script at tiny16 on the CPU (what the tests run)
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-runs/bench_gpu}
mkdir -p "$OUT"
if [ "${BENCH_TINY:-0}" = 1 ]; then
  presets=tiny16; models=diffae; amps=bf16; compile=(""); extra=(--device cpu --batch-size 2 --warmup 0 --iters 1 --sample-T 2)
else
  presets="toy32 ffhq128"; models="diffae pdae"; amps="off bf16"; compile=("" "--compile"); extra=(--device cuda --iters 20)
fi
for preset in $presets; do
  for model in $models; do
    for amp in $amps; do
      for c in "${compile[@]}"; do
        name="bench_${preset}_${model}_${amp}${c:+_compile}"
        echo "== $name"
        python bench.py --preset "$preset" --model "$model" --amp "$amp" $c "${extra[@]}" --json "$OUT/$name.json"
      done
    done
  done
done
echo "wrote $(ls "$OUT"/bench_*.json | wc -l) result files to $OUT"
