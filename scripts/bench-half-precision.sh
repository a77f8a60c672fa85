#!/usr/bin/env bash
# Node sweep of the default model in f32, bf16 and f16 (16 digits prompts, mean ablation): wall
# times and how far the half-precision scores are from f32. A benchmark, not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/circuit-sweep
[ -x "$bin" ] || cargo build --release --locked
n=${N:-16}
out=$(mktemp -d)
for d in f32 bf16 f16; do
  printf '[model]\ndtype = "%s"\n[data]\ntask = "digits"\nn = %s\nseed = 0\n[sweep]\nkind = "nodes"\n' "$d" "$n" >"$out/$d.toml"
  start=$(date +%s.%N)
  "$bin" run "$out/$d.toml" --out "$out/$d" --quiet
  echo "$d $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")" >>"$out/times"
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
times = dict(l.split() for l in open(f"{out}/times"))
def load(d):
    r = json.load(open(f"{out}/{d}/result.json"))
    n = r["nodes"]
    return r["full"], [v for row in n["heads"] for v in row] + n["mlps"]
f_full, ref = load("f32")
def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0] * len(xs)
    for k, i in enumerate(order):
        r[i] = k
    return r
def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))
def top(xs, k=10):
    return set(sorted(range(len(xs)), key=lambda i: xs[i])[:k])
print(f"{'dtype':6} {'wall s':>7} {'full':>8} {'max |d| pp':>11} {'mean |d| pp':>12} {'spearman':>9} {'top-10 shared':>14}")
for d in ["f32", "bf16", "f16"]:
    full, s = load(d)
    diffs = [abs(a - b) for a, b in zip(ref, s)]
    print(f"{d:6} {float(times[d]):7.1f} {full:8.4f} {max(diffs):11.3f} {sum(diffs)/len(diffs):12.4f} {spearman(ref, s):9.4f} {len(top(ref) & top(s)):>11}/10")
PY
