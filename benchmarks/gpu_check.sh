#!/usr/bin/env bash
# distillkit's GPU-only checks in one call (benchmarks/README.md, "GPU checks").
#
#   bash benchmarks/gpu_check.sh --prepare [--with-pyarrow]   # HERE, once: wheels of what the GPU image lacks -> .whl/
#   bash benchmarks/gpu_check.sh [gpu_check.py options]       # THERE (device tool, carry [".whl"]): run the checks
#
# On the GPU machine: python3 (the image's, with torch and transformers) gets the carried wheels installed into
# /tmp/gpu_check_site (nothing else is touched), the repo on PYTHONPATH, then benchmarks/gpu_check.py runs every
# selected check in its own process with its own time limit, all inside GPU_CHECK_BUDGET_S (default 480 s, counted
# from this script's start). The report lands in $OUT (gpu_check.json, gpu_check.txt, gpu_check.log).
# Exit: 0 all passed, 1 a check failed or errored (no GPU, timeout), 3 only "unavailable" (a missing package).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
WHEELS="$REPO/.whl"

if [[ "${1:-}" == "--prepare" ]]; then
    # Pure-Python wheels (plus one py312 build) of the packages distillkit, TRL and Liger need that the device
    # image ('cuda': torch, transformers, accelerate, peft, pyarrow, pandas, xxhash, ... are there) does not have.
    # Versions are the ones the project's venv runs. vLLM is not among them: its wheel is ~340 MB (the carry limit
    # is 64 MiB) and vllm 0.33 pins torch 2.14 (the image has 2.11), so the vllm check reports "unavailable" there.
    grep -qxF "/.whl/" "$REPO/.git/info/exclude" 2>/dev/null || { mkdir -p "$REPO/.git/info"; echo "/.whl/" >> "$REPO/.git/info/exclude"; }
    mkdir -p "$WHEELS"
    PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    PKGS=(hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 trl==1.16.0
          liger-kernel==0.8.5)
    [[ "${2:-}" == "--with-pyarrow" ]] && PKGS+=(pyarrow==25.0.1)   # ~50 MB: only if the image's pyarrow is too old
    python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$WHEELS" "${PKGS[@]}" || exit 1
    # antlr4-python3-runtime 4.9.3 (hydra/omegaconf pin 4.9.*) is published as an sdist only: build its pure wheel.
    python3 -m pip wheel -q --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3 || exit 1
    ls -la "$WHEELS"
    du -sh "$WHEELS"
    exit 0
fi

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-480}
OUT="${OUT:-$REPO/outputs/gpu_check}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export OUT PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 MLFLOW_TRACKING_URI=file:/tmp/gpu_check_mlruns \
       HF_HOME=/tmp/gpu_check_hf VLLM_CACHE_ROOT=/tmp/gpu_check_vllm TRITON_CACHE_DIR=/tmp/gpu_check_triton

{
    echo "gpu_check.sh: $(date -u '+%F %T UTC'), budget ${BUDGET} s, out $OUT"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
    SITE=/tmp/gpu_check_site
    if compgen -G "$WHEELS/*.whl" > /dev/null; then
        # Only pyarrow may be on the image already: install the carried one only if the image's is older than 24.
        skip_arrow=$($PY -c "import pyarrow, sys; sys.stdout.write(str(int(pyarrow.__version__.split('.')[0]) >= 24))" 2>/dev/null || echo False)
        wheels=()
        for w in "$WHEELS"/*.whl; do
            [[ "$(basename "$w")" == pyarrow-* && "$skip_arrow" == True ]] && continue
            wheels+=("$w")
        done
        echo "installing ${#wheels[@]} carried wheels into $SITE"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
            || echo "gpu_check.sh: WARNING: the wheel install failed; checks that need those packages will say so"
        export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no wheels in $WHEELS (run 'bash benchmarks/gpu_check.sh --prepare' first and carry .whl); using what is installed"
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    fi
    $PY - <<'EOF'
import importlib
for name in ("torch", "transformers", "accelerate", "pyarrow", "datasets", "hydra", "omegaconf", "trl", "liger_kernel", "triton", "vllm"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001
        print(f"  {name}: NOT importable ({type(exc).__name__}: {exc})")
EOF
    LEFT=$(( BUDGET - ($(date +%s) - START) ))
    $PY benchmarks/gpu_check.py --out "$OUT" --budget "$LEFT" "$@"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
