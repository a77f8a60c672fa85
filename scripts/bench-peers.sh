#!/usr/bin/env bash
# circuit-sweep against the loops researchers write today, on the same machine in one run: a node
# sweep (every head and MLP, mean ablation, logit difference, 16 prompts) of
#   1. the default model (SmolLM2-135M, its GGUF dequantized to an f32 Hugging Face folder that
#      both tools read), against a plain `transformers` loop, and
#   2. a GPT-2-small-shaped model with random weights (16 numerals prompts of 23 tokens), against
#      the same loop and a TransformerLens `hook_z` loop.
# The loops run one forward pass of all prompts per component (scripts/bench_peers.py). Prints one
# table: seconds, the speed-up over each peer, and the largest score difference in pp. A benchmark,
# not part of CI; the first run makes a venv (PyTorch, transformers, TransformerLens<3) in
# target/bench-peers: PyPI's torch wheel brings its CUDA libraries, several GB to download.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
export THREADS=$threads OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
work=target/bench-peers
bin=target/release/circuit-sweep
cargo build --release --locked
"$bin" model fetch >/dev/null
gguf=${CIRCUIT_SWEEP_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv" \
    || { echo "python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
py=$work/venv/bin/python
"$py" -c 'import torch, transformers, transformer_lens, gguf' 2>/dev/null \
  || "$work/venv/bin/pip" install -q torch transformers 'transformer_lens<3' gguf 'pyarrow<21'
[ -f "$work/smollm2/config.json" ] \
  || "$py" scripts/bench_peers.py prepare-smollm2 "$gguf" "$work/smollm2"
[ -f "$work/gpt2/config.json" ] \
  || "$py" scripts/bench_peers.py prepare-gpt2 "$work/gpt2" tests/fixtures/gpt2-tokenizer

rm -f "$work/times"
# name, model folder, task
cases=("smollm2 $work/smollm2 digits" "gpt2 $work/gpt2 numerals")
for c in "${cases[@]}"; do
  read -r name dir task <<<"$c"
  out=$work/$name-run
  rm -rf "$out" && mkdir -p "$out"
  "$bin" prompts gen "$task" --model "$dir" --n 16 --seed 0 -o "$out/data.jsonl" >/dev/null
  "$bin" prompts check "$out/data.jsonl" --model "$dir" --json >"$out/check.json"
  # A random model may prefer `wrong`; the sweep needs a positive logit difference, so swap them.
  python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
if json.load(open(f"{out}/check.json"))["summary"]["mean_logit_diff"] < 0:
    rows = [json.loads(l) for l in open(f"{out}/data.jsonl")]
    with open(f"{out}/data.jsonl", "w") as f:
        for r in rows:
            r["answer"], r["wrong"] = r["wrong"], r["answer"]
            f.write(json.dumps(r) + "\n")
PY
  "$bin" prompts check "$out/data.jsonl" --model "$dir" --json >"$out/check.json"
  printf '[model]\npath = "%s"\n[data]\nfile = "data.jsonl"\n[sweep]\nkind = "nodes"\n' \
    "$(realpath "$dir")" >"$out/spec.toml"
  start=$(date +%s.%N)
  "$bin" run "$out/spec.toml" --out "$out/results" --quiet >/dev/null
  echo "$name circuit-sweep $(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")" >>"$work/times"
  "$py" scripts/bench_peers.py naive "$dir" "$out/data.jsonl" "$out/check.json" "$out/results/result.json" >"$out/transformers.json"
  if [ "$name" = gpt2 ]; then
    "$py" scripts/bench_peers.py lens "$dir" "$out/data.jsonl" "$out/check.json" "$out/results/result.json" >"$out/lens.json"
  fi
done

python3 - "$work" "$threads" "$("$py" -c 'import importlib.metadata as m; print(*(m.version(p) for p in ["torch", "transformers", "transformer_lens"]))')" <<'PY'
import json, sys
from pathlib import Path
work, threads, versions = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
times = {}
for line in open(work / "times"):
    name, _, secs = line.split()
    times[name] = float(secs)
print(f"torch {versions[0]}, transformers {versions[1]}, TransformerLens {versions[2]}; {threads} threads")
print("circuit-sweep's seconds are the whole `run` (model load, prompt checks, results folder); the")
print("loops' start after their model is loaded")
print(f"{'model':8} {'tool':18} {'components':>10} {'seconds':>8} {'circuit-sweep is':>17} {'max |d| pp':>11}")
for name in ["smollm2", "gpt2"]:
    ours = times[name]
    res = json.load(open(work / f"{name}-run/results/result.json"))
    n = sum(len(r) for r in res["nodes"]["heads"]) + len(res["nodes"]["mlps"])
    print(f"{name:8} {'circuit-sweep run':18} {n:>10} {ours:8.1f} {'':>17} {'':>11}")
    for peer in ["transformers", "lens"]:
        f = work / f"{name}-run/{peer}.json"
        if f.exists():
            r = json.loads(f.read_text().strip().splitlines()[-1])
            print(f"{'':8} {r['tool']:18} {r['components']:>10} {r['seconds']:8.1f} {r['seconds'] / ours:16.2f}x {r['max_abs_diff_pp']:11.2e}")
PY
