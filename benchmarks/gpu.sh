#!/usr/bin/env bash
# The painter's GPU benchmark in one command (details: benchmarks/gpu.py's docstring):
#
#     benchmarks/gpu.sh                       # CUDA: full-size random-weight DIM-4.6B, 1024², 30 steps, CFG 7.5
#     benchmarks/gpu.sh --device cpu          # the dry mode (tiny preset, 64², 2 steps; make test runs it)
#
# Any argument is passed to benchmarks/gpu.py (--compile max-autotune, --batches 1,4,8,16, --budget-s ...).
#
# Python: $DIMFLOW_PYTHON if set, else the repository's venv (.venv, or $DIMFLOW_BENCH_VENV), else this
# script creates that venv and installs the pinned dependencies into it: torch==2.13.0 from the CUDA wheel
# index ($TORCH_INDEX, default PyTorch's cu128 one, as k8s/Dockerfile.cuda), then requirements.lock and
# dimflow itself from $PIP_INDEX_URL (default PyPI). That NEEDS A PACKAGE INDEX: both indexes are probed
# first (10 s each) and, when one cannot be reached, the script stops at once (exit 3) saying so instead of
# hanging in pip. The 8-minute budget counts from this script's start, the install (about 5 GB of wheels)
# included: a measurement that no longer fits is skipped with a line saying so, and a rerun finds the venv
# and the cached checkpoint.
#
# The checkpoint (~11.5 GB in bf16) is written once under $DIMFLOW_CACHE (default ~/.cache/dimflow) and
# reused by later runs.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DIMFLOW_BENCH_STARTED="${DIMFLOW_BENCH_STARTED:-$(date +%s)}"
VENV="${DIMFLOW_BENCH_VENV:-$REPO/.venv}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
PYPI_INDEX="${PIP_INDEX_URL:-https://pypi.org/simple}"

say() { printf 'gpu.sh: %s\n' "$*" >&2; }

dry=0
previous=""
for arg in "$@"; do
    if [[ "$arg" == "--device=cpu" || ( "$previous" == "--device" && "$arg" == "cpu" ) ]]; then
        dry=1
    fi
    previous="$arg"
done
if [[ $dry -eq 0 ]] && ! nvidia-smi -L >/dev/null 2>&1; then
    say "no NVIDIA GPU is visible here (nvidia-smi -L failed); for the CPU dry mode pass --device cpu"
    exit 2
fi

probe() {  # probe URL: can this machine reach a package index? (10 s, no retries)
    "$1" - "$2" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=10).close()
except Exception as exc:  # any failure means: not reachable from here
    print(f"{sys.argv[1]}: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
EOF
}

bootstrap() {
    local base="${PYTHON:-python3.11}"
    if ! command -v "$base" >/dev/null 2>&1; then
        say "no venv at $VENV and no $base to create one (dimflow needs Python 3.11; set PYTHON=...)"
        exit 3
    fi
    if ! "$base" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        say "$base is not Python 3.11 (dimflow's pins are for 3.11; set PYTHON=...)"
        exit 3
    fi
    for index in "$TORCH_INDEX/torch/" "$PYPI_INDEX/pip/"; do
        if ! probe "$base" "$index"; then
            say "no venv at $VENV, and creating one needs a package index, which is not reachable from here."
            say "Copy a venv with requirements.lock and a CUDA build of torch 2.13.0 to $VENV (or point"
            say "DIMFLOW_PYTHON at one), or set PIP_INDEX_URL / TORCH_INDEX to reachable mirrors, and rerun."
            exit 3
        fi
    done
    say "creating $VENV and installing the pinned dependencies (about 5 GB of wheels)"
    "$base" -m venv "$VENV"
    local pip=("$VENV/bin/python" -m pip install -q --timeout 30 --retries 1)
    "${pip[@]}" --index-url "$TORCH_INDEX" torch==2.13.0
    "${pip[@]}" -r "$REPO/requirements.lock"
    "${pip[@]}" --no-deps -e "$REPO"
    touch "$VENV/.installed"  # the Makefile's marker: the same pinned set (with a CUDA torch)
}

PY="${DIMFLOW_PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        bootstrap
    fi
    PY="$VENV/bin/python"
fi
exec "$PY" "$REPO/benchmarks/gpu.py" "$@"
