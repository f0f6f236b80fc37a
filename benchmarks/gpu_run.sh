#!/bin/sh
# The benchmark suite on a lent GPU machine, in one call.
#
# That machine has JAX (Python 3.12) but neither TensorFlow nor Keras' two
# small dependencies namex and optree, so Keras travels as wheels and the
# suite runs on the JAX backend (the suite imports TensorFlow only for its
# TensorFlow-only sections). Two steps:
#
#   sh benchmarks/gpu_run.sh fetch   # here, once: the wheels into .whl/ (git-ignored)
#   sh benchmarks/gpu_run.sh run     # there, with .whl carried; results under $OUT
#
# `run` writes $OUT/gpu.txt (the device as nvidia-smi and JAX see it),
# $OUT/run.log, $OUT/results.json and $OUT/benchmarks.png: the `--reference`
# plan (depth 32; T 16 and 64; batch 1024 at T 64), a few minutes, with
# `gru_layers` (32 keras.layers.GRU layers) besides the GRU-cell stack and
# without `looped_xla` (on JAX the same model as `looped`); then the
# mixed-lengths benchmark's quick size ($OUT/mixed_lengths_quick.json and
# $OUT/mixed_lengths.log).
set -eu

KERAS_VERSION=3.15.1

case "${1:-}" in
fetch)
    mkdir -p .git/info
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null \
        || echo "/.whl/" >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "keras==$KERAS_VERSION" namex==0.1.0 optree==0.20.0
    ls .whl
    ;;
run)
    : "${OUT:?run: OUT must name the folder for the results}"
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    PYTHONPATH="/tmp/site:$(pwd)"
    KERAS_BACKEND=jax
    PYTHONUNBUFFERED=1
    export PYTHONPATH KERAS_BACKEND PYTHONUNBUFFERED
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
        > "$OUT/gpu.txt" 2>&1 || true
    python3 -c "import jax, keras; print(jax.devices(), 'keras', keras.__version__)" \
        >> "$OUT/gpu.txt" 2>&1
    cat "$OUT/gpu.txt"
    python3 -m benchmarks.run --reference --backend jax --out "$OUT" \
        --variants looped,unrolled,straightforward,gru_stack,gru_layers,empty \
        2>&1 | tee "$OUT/run.log"
    python3 -m benchmarks.mixed_lengths --quick --backend jax \
        --out "$OUT/mixed_lengths_quick.json" 2>&1 | tee "$OUT/mixed_lengths.log"
    ;;
*)
    echo "usage: sh benchmarks/gpu_run.sh fetch|run (got '${1:-}')" >&2
    exit 2
    ;;
esac
