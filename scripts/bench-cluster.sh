#!/usr/bin/env bash
# The distributed benchmark of BENCHMARKS.md: an order study of the default model on 1 and on 2
# worker processes, each limited to one compute thread, against a coordinator on loopback.
# Usage: scripts/bench-cluster.sh [ORDERS] (default 32: two shards of 16 orders).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CIRCUIT_SWEEP_BIN:-target/release/circuit-sweep}
orders=${1:-32}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/orders.toml" <<SPEC
[data]
task = "digits"
n = 4
seed = 0

[sweep]
kind = "orders"
orders = $orders
seed = 0
threshold = 80.0
SPEC
export CIRCUIT_SWEEP_LOG=warn CIRCUIT_SWEEP_TOKEN=bench
for n in 1 2; do
  port=$((7300 + n))
  "$bin" coordinator --listen "127.0.0.1:$port" --state "$work/state-$n" &
  coord=$!
  sleep 0.5
  pids=()
  for i in $(seq "$n"); do
    "$bin" worker --coordinator "http://127.0.0.1:$port" --threads 1 --name "w$i" &
    pids+=($!)
  done
  t0=$(date +%s)
  "$bin" submit "$work/orders.toml" --coordinator "http://127.0.0.1:$port" --wait --quiet \
    --out "$work/out-$n" >/dev/null
  t1=$(date +%s)
  echo "$n worker(s), 1 thread each: $orders orders in $((t1 - t0)) s"
  kill -TERM "${pids[@]}" "$coord"
  wait "${pids[@]}" "$coord" 2>/dev/null || true
done
python3 - "$work" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/out-{n}/result.json")) for n in (1, 2))
a.pop("timing"); b.pop("timing")
print("results identical:", a == b)
PY
