#!/usr/bin/env bash
# Run every CUDA path of llmlite once and measure QLoRA and 4-bit decoding against peers, on one GPU (issue 19).
#
#   bash bench/gpu.sh OUT_DIR              on the GPU machine: well under 10 minutes on one H200 (GPU_BUDGET_S, default 540 s, caps the whole run)
#   bash bench/gpu.sh --dry-run OUT_DIR    anywhere: every step on the CPU with tiny shapes, skipping exactly what needs CUDA
#
# Steps: (1) the notebooks' `#| cuda` cells (nbdev-test --flags cuda), (2) pytest -m cuda tests/test_cuda.py, (3) bench/gpu_qlora.py
# (QLoRA and QDoRA, Llama-3-8B shape, seq 2048, bs 1 and 4, llmlite vs transformers + PEFT + bitsandbytes, plus llmlite with
# torch.compile), (4) bench/gpu_decode.py (NF4 decode at bs 1 and 16 against the copy roofline, eager and compiled).
# Writes OUT_DIR/gpu.log (everything printed), OUT_DIR/results.json (every figure and each step's outcome) and OUT_DIR/summary.md
# (the tables and issue 19's targets as met / missed / not measured). A step that fails or runs out of time is recorded and the
# rest still run.
#
# Needs, on the machine it runs on (it installs nothing, and the GPU machine has no network):
#   python3 (or $PYTHON) with torch (CUDA build for a real run), transformers, peft, safetensors, numpy, matplotlib, jinja2, pyyaml;
#   bitsandbytes, fastcore and gguf (llmlite's own dependencies); nbdev and execnb for step 1 (else it is skipped, and said so).
# The GPU machine's image has the first line and lacks the rest. Pack them here, from this venv, and carry the folder:
#   python bench/gpu_pack.py .gpu-site     (about 35 MiB of pure-Python packages, bitsandbytes' CUDA 13 kernels included)
#   echo /.gpu-site/ >> .git/info/exclude  then run with carry [".gpu-site"]: this script puts .gpu-site first on PYTHONPATH.
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
[ $# -eq 1 ] || { echo "usage: bash bench/gpu.sh [--dry-run] OUT_DIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
PARTS=$(mktemp -d)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -d "$ROOT/.gpu-site" ] && export PYTHONPATH="$ROOT/.gpu-site:$PYTHONPATH"
[ $DRY = 1 ] && export LLMLITE_DRY_RUN=1
SCALE=$(( DRY ? 4 : 1 ))   # a CPU dry run is slower, and a shared CPU machine more so: its limits are 4 times longer
BUDGET=${GPU_BUDGET_S:-$(( 540 * SCALE ))}
START=$(date +%s)
cd "$ROOT"
exec > >(tee "$OUT/gpu.log") 2>&1
echo "== bench/gpu.sh $([ $DRY = 1 ] && echo '--dry-run ')$(date -u +%FT%TZ) on $(hostname), load average $(cut -d' ' -f1-3 /proc/loadavg)"

step() {  # step NAME CAP_SECONDS COMMAND...: run with a timeout (the smaller of CAP and what is left of BUDGET); record rc and seconds
  local name=$1 cap=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  local lim=$(( cap < left ? cap : left ))
  if [ $lim -le 10 ]; then echo "== $name: SKIPPED, the time budget is spent"; record "$name" 124 0 "not run: budget spent"; return; fi
  echo "== $name (limit ${lim}s): $*"
  local t0=$(date +%s%N)
  timeout -k 10 $lim "$@" 2>&1 | tee "$PARTS/$name.log"
  local rc=${PIPESTATUS[0]}
  local s=$(( ($(date +%s%N) - t0) / 1000000 ))
  local summary; summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|Success|nbdev Tests Failed|Traceback|Error' "$PARTS/$name.log" | tail -1)
  [ $rc = 124 ] && summary="timed out after ${lim}s"
  echo "== $name: rc $rc in $(( s / 1000 ))s${summary:+: $summary}"
  record "$name" $rc $s "$summary"
}
record() { "$PY" - "$PARTS/steps.json" "$@" <<'EOF'
import json, sys, os
p, name, rc, ms, summary = sys.argv[1:6]
d = json.load(open(p)) if os.path.exists(p) else {}
d[name] = dict(rc=int(rc), s=int(ms) / 1000, summary=summary.strip().strip('=').strip())
json.dump(d, open(p, 'w'), indent=1)
EOF
}

# 0. what this machine has
"$PY" - "$PARTS/env.json" $DRY <<'EOF' || { echo "== the environment is not ready: see above"; exit 2; }
import importlib, json, os, sys
from importlib.metadata import version
out, dry = sys.argv[1], sys.argv[2] == '1'
need = ['torch', 'transformers', 'peft', 'safetensors', 'numpy', 'bitsandbytes', 'fastcore', 'gguf']
ver, missing = {}, []
for n in need + ['nbdev', 'execnb']:
    try: importlib.import_module(n); ver[n] = version(n)
    except Exception as e: ver[n] = None; missing += [n] if n in need else []; print(f"   {n}: not importable ({type(e).__name__}: {e})")
if missing: sys.exit(f"missing {', '.join(missing)}: on the GPU machine, pack them here with `python bench/gpu_pack.py .gpu-site` and carry .gpu-site")
import torch
cuda = torch.cuda.is_available()
if not cuda and not dry: sys.exit("no CUDA device: run with --dry-run on a machine without a GPU")
env = dict(ver, dry_run=dry, cuda=cuda, device=torch.cuda.get_device_name() if cuda else 'cpu', torch_cuda=torch.version.cuda,
           python=sys.version.split()[0], cpus=os.cpu_count(), load_avg=os.getloadavg(), nbdev_ok=ver['nbdev'] is not None and ver['execnb'] is not None)
if cuda: env |= dict(capability='.'.join(map(str, torch.cuda.get_device_capability())), gpu_mem_gib=torch.cuda.get_device_properties(0).total_memory / 2**30)
json.dump(env, open(out, 'w'), indent=1)
print('   ' + ', '.join(f"{k} {v}" for k, v in env.items()))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader

# 1. the notebooks' cuda cells, all such notebooks in one parallel nbdev-test (a dry run runs their other cells and names the cuda cells it leaves out)
NBS=$(grep -l '"#| cuda' nbs/*.ipynb | xargs -n1 basename | sed 's/\.ipynb$//' | paste -sd'|')
if "$PY" -c 'import nbdev, execnb' 2>/dev/null; then
  FLAGS=(--flags cuda)
  if [ $DRY = 1 ]; then FLAGS=(); for nb in ${NBS//|/ }; do echo "   $nb: $(grep -c '"#| cuda' nbs/$nb.ipynb) cuda cell(s) left out: they need CUDA"; done; fi
  step cells 150 "$PY" -c 'from nbdev.test import nbdev_test; nbdev_test()' "${FLAGS[@]}" --file-re "^($NBS)\.ipynb\$" nbs
else echo "== cells: SKIPPED, nbdev/execnb are not importable (pack them: python bench/gpu_pack.py .gpu-site)"; record cells 1 0 "not run: no nbdev"; fi

# 2. the cuda tests
step pytest 240 "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider

# 3. QLoRA / QDoRA against transformers + PEFT + bitsandbytes, with the planner's prediction; llmlite compiled too
if [ $DRY = 1 ]; then QA=(--dry-run --bs 1 2 --rounds 2 --steps 1 --warmup 2); DA=(--dry-run --new 8 --reps 1); else QA=(--compile); DA=(--compile); fi
[ $DRY = 1 ] && echo "   torch.compile is left out of the dry run's benchmarks (inductor on a CPU is another backend, and slow here); the GPU run compiles"
step qlora 330 "$PY" bench/gpu_qlora.py --out "$PARTS/qlora.json" "${QA[@]}"

# 4. NF4 decode against the copy roofline, eager and compiled (the dry run leaves compiling out: inductor on a CPU is another path)
step decode 200 "$PY" bench/gpu_decode.py --out "$PARTS/decode.json" "${DA[@]}"

"$PY" bench/gpu_report.py "$PARTS" "$OUT" >/dev/null && echo "== results: $OUT/results.json, $OUT/summary.md" && cat "$OUT/summary.md"
echo "== done in $(( $(date +%s) - START ))s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$PARTS"
