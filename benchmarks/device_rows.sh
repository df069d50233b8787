#!/usr/bin/env bash
# One device call: install the carried wheels (hydra, omegaconf, antlr4, FA3 where built), optionally
# build FA3 (BUILD_FA3=1; DURING_BUILD runs meanwhile), run the GPU tests named in GPU_TESTS (GPU_K: a pytest -k expression), then the rows in ROWS_FILE (one row's overrides a
# line) through benchmarks/run_rows.py; the rows and logs go to $OUT. The rows record the commit in
# STEPBENCH_GIT_COMMIT (the device copy's .git may be stale); BASE_TREE=path also runs the rows of
# BASE_ROWS_FILE from that tree (an older commit, BASE_COMMIT), in the same call.
#   bash benchmarks/device_rows.sh ROWS_FILE [RESULTS_NAME]
set -uo pipefail
rows_file=$1; name=${2:-rows}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  $(ls .fa3whl/*.whl 2>/dev/null) || exit 3
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ -n "${BUILD_FA3:-}" ] && ! python3 -c "import flash_attn_interface" 2>/dev/null; then
  # DURING_BUILD (a shell command, e.g. a kernel benchmark that times only GPU kernels) runs while
  # FA3 compiles; rows wait for the build, so no row's host side shares the CPU with the compiler.
  (python3 -m core.fa3_build --source .fa3src/flash-attention --cutlass .fa3src/cutlass --jobs 14 \
    --wheel-dir /tmp/fa3w --target /tmp/site --no-test 2>&1 | tail -3
   find /tmp/fa3w -name '*.whl' -exec cp {} "$OUT/" \;) &
  build=$!
  if [ -n "${DURING_BUILD:-}" ]; then bash -c "$DURING_BUILD"; fi
  wait $build
fi
if [ -n "${GPU_TESTS:-}" ]; then
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS ${GPU_K:+-k "$GPU_K"} 2>&1 | tail -15 | tee "$OUT/gpu-tests.txt"
fi
export STEPBENCH_RUN_ID=${STEPBENCH_RUN_ID:-$(python3 -c "import uuid; print(uuid.uuid4().hex[:16])")}
if [ -n "${BASE_TREE:-}" ]; then
  (cd "$BASE_TREE" && STEPBENCH_GIT_COMMIT=$BASE_COMMIT STEPBENCH_GIT_DIRTY=0 \
    xargs -d '\n' -a "$OLDPWD/${BASE_ROWS_FILE}" python3 benchmarks/run_rows.py --timeout 400 \
    --results "$OUT/$name.jsonl" 2>&1 | grep -E "^(===|qwen|Qwen|FAILED|model )|stepbench: (row|  step|  warm)" | tail -40)
fi
xargs -d '\n' -a "$rows_file" python3 benchmarks/run_rows.py --timeout 400 --results "$OUT/$name.jsonl" 2>&1 \
  | grep -E "^(===|qwen|Qwen|FAILED|model )|stepbench: (row|  step|  warm|  busy)|Error" | tail -60
