#!/usr/bin/env bash
# All GPU rows of docs/benchmarks.md in one call (about 5-7 minutes on an H100/H200; each step has its own timeout so
# the whole script stays under 8 minutes). Writes <step>.json and <step>.md into OUT_DIR, plus session.md (all
# tables with the command, date, device and commit) -- paste session.md's tables into docs/benchmarks.md.
#
#   benchmarks/gpu_session.sh OUT_DIR [PYTHON]
#
# Needs: a CUDA build of torch and this repository's dependencies in PYTHON (default: python3); the package is
# installed in editable mode without dependencies when it is not importable yet.
set -u
OUT=${1:?usage: benchmarks/gpu_session.sh OUT_DIR [PYTHON]}
PY=${2:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if ! "$PY" -c "import OrthoDiffusionLib.training" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { echo "install failed, see $OUT/install.log"; exit 1; }
fi
"$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')" || exit 1
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
{
  echo "# GPU session: $(date -u +%Y-%m-%dT%H:%M:%SZ), $DEVICE, commit $COMMIT, torch $("$PY" -c 'import torch; print(torch.__version__)')"
  echo
} >"$OUT/session.md"
FAILED=0
run() {  # run NAME SECONDS ARGS...: JSON and Markdown of one bench subject
  local name=$1 limit=$2; shift 2
  echo "== $name: orthodiffusion bench $*"
  if timeout "$limit" "$PY" -m OrthoDiffusionLib bench "$@" --json >"$OUT/$name.json" 2>"$OUT/$name.err"; then
    "$PY" - "$OUT/$name.json" "$OUT/$name.md" <<'PYEOF'
import json, sys
from OrthoDiffusionLib.bench.timing import print_results
import contextlib, io
data = json.load(open(sys.argv[1]))
rows = data.pop("rows"); title = data.pop("title")
cols = list(dict.fromkeys(k for r in rows for k in r))
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    print_results(title, rows, cols, data, False)
open(sys.argv[2], "w").write(buf.getvalue())
PYEOF
    { echo "Command: \`orthodiffusion bench $*\`"; echo; cat "$OUT/$name.md"; echo; } >>"$OUT/session.md"
  else
    echo "   FAILED or timed out (see $OUT/$name.err)"; FAILED=1
    { echo "Command: \`orthodiffusion bench $*\`: FAILED or timed out after ${limit}s"; echo; } >>"$OUT/session.md"
  fi
}
run inference 80 inference --device cuda --precisions fp32,bf16 --repeats 10 --warmup 2
run inference_cl 45 inference --device cuda --precisions bf16 --channels-last --no-reference --repeats 10 --warmup 2
run batch 60 batch --device cuda --precision bf16 --exams 1 4 16 --repeats 3
run train 90 train --device cuda --batch 10 --steps 12 --warmup 4
run train_compile 100 train --device cuda --batch 10 --steps 12 --warmup 4 --compile --steps-of pretrain
run flops 45 flops --device cuda --precision bf16 --repeats 5
run scaling 45 scaling --device cuda --precision bf16 --sizes 128 256 512 --slices 16 32 --repeats 3
echo "wrote $OUT/session.md"
exit $FAILED
