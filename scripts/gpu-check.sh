#!/usr/bin/env bash
# On a GPU machine: the CUDA build against the CPU on the default model, then sweeps timed on
# the GPU; prints a table. Give a prebuilt CUDA binary as BIN (built here with
# `eval "$(scripts/cuda-toolkit.sh)"; cargo build --release --features cuda` and copied over
# with models/), or let it build one. Meant to fit in 8 minutes on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/circuit-sweep}
DEV=${DEV:-cuda:0}
export CIRCUIT_SWEEP_LOG=${CIRCUIT_SWEEP_LOG:-warn}
if [ ! -x "$BIN" ]; then
  eval "$(scripts/cuda-toolkit.sh)"
  cargo build --release --features cuda
fi
work=$(mktemp -d)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$BIN" model fetch >/dev/null

echo "## logits, CPU against $DEV (top 10 next tokens, f32)"
for p in "1 2 3 4 " "January February March April" "Mary born in 3. Mary born in 4. Mary born in"; do
  "$BIN" predict --json --top 10 "$p" > "$work/cpu.json"
  "$BIN" predict --json --top 10 --device "$DEV" "$p" > "$work/gpu.json"
  python3 - "$work/cpu.json" "$work/gpu.json" "$p" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
la = {t["id"]: t["logit"] for t in a["top"]}
lb = {t["id"]: t["logit"] for t in b["top"]}
common = set(la) & set(lb)
rel = max(abs(la[i] - lb[i]) / max(abs(la[i]), 1e-6) for i in common)
same = [t["id"] for t in a["top"]] == [t["id"] for t in b["top"]]
print(f"{sys.argv[3]!r:50} same top-10 order: {same}, max relative logit error {rel:.2e}")
PY
done

sweep() { # name, device, dtype, prompts, kind, extra
  cat > "$work/$1.toml" <<TOML
[model]
device = "$2"
dtype = "$3"
[data]
task = "digits"
n = $4
seed = 0
[sweep]
kind = "$5"
$6
TOML
  local t0
  t0=$(date +%s.%N)
  "$BIN" run "$work/$1.toml" --out "$work/$1" --quiet >/dev/null
  python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')"
}

echo "## node sweeps and an order study"
echo "| run | wall s |"
echo "|---|---|"
echo "| node sweep, 16 prompts, cpu f32 | $(sweep cpu16 cpu f32 16 nodes '') |"
echo "| node sweep, 16 prompts, $DEV f32 | $(sweep gpu16 "$DEV" f32 16 nodes '') |"
echo "| node sweep, 16 prompts, $DEV bf16 | $(sweep bf16 "$DEV" bf16 16 nodes '') |"
echo "| node sweep, 512 prompts, $DEV f32 | $(sweep gpu512 "$DEV" f32 512 nodes '') |"
echo "| order study, 8 orders, 16 prompts, $DEV f32 | $(sweep orders "$DEV" f32 16 orders 'orders = 8') |"

python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
def heads(name):
    d = json.load(open(f"{w}/{name}/result.json"))
    return [x for row in d["nodes"]["heads"] for x in row] + d["nodes"]["mlps"]
cpu = heads("cpu16")
for name, tol in (("gpu16", 1e-3), ("bf16", 0.5)):
    diff = max(abs(a - b) for a, b in zip(cpu, heads(name)))
    print(f"{name}: max node-score difference from cpu {diff:.2e} pp (allowed {tol}) -> {'ok' if diff <= tol else 'FAIL'}")
PY
rm -rf "$work"
