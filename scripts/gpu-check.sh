#!/usr/bin/env bash
# The GPU check, in one call on a GPU machine that has no Rust toolchain and no network:
#
#   scripts/gpu-build.sh                      # here: carry/circuit-sweep.xz
#   scripts/gpu-check.sh                      # there (carry: carry), about 8 minutes on an H200
#   DEV=cpu scripts/gpu-check.sh              # rehearsal on a CPU: small shapes, no GPU rows
#
# Models are made on the spot (`model init`): nothing is downloaded. It checks the GPU against
# the CPU (logits and node scores on GPT-2, NeoX and Llama/GQA shapes), measures the matmul
# peak through candle, times node sweeps, an edge sweep and an order study (MFU against that
# peak), and the naive per-head PyTorch loop with the machine's own torch. Every step runs
# even when an earlier one fails; the table goes to $OUT/gpu-check.md, every command's output
# to $OUT/gpu-check.log. Exits 1 when a check failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DEV=${DEV:-cuda:0}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
# The CUDA build (carried xz-compressed) needs the driver's libcuda even to start: a rehearsal
# runs the CPU build.
if [ -z "${BIN:-}" ]; then
  if [ "$DEV" != cpu ] && [ -f carry/circuit-sweep.xz ]; then
    BIN=$WORK/circuit-sweep
    "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      carry/circuit-sweep.xz "$BIN" && chmod +x "$BIN"
  else
    BIN=target/release/circuit-sweep
  fi
fi
SCALE=${SCALE:-$([ "$DEV" = cpu ] && echo small || echo full)}
export CIRCUIT_SWEEP_LOG=${CIRCUIT_SWEEP_LOG:-warn}
log=$OUT/gpu-check.log
table=$OUT/gpu-check.md
: >"$log"
failed=0
start=$(date +%s)

say() { echo "$*" | tee -a "$table"; }
elapsed() { echo $(( $(date +%s) - start )); }
# Runs a command with its output in the log; returns its status.
# A step that hangs (a driver call, a collective) is stopped after STEP_S seconds, so that the
# steps after it still run inside the device call's limit.
STEP_S=${STEP_S:-240}
step() {
  echo "=== [$(elapsed) s] $*" >>"$log"
  timeout --kill-after=10 "$STEP_S" "$@" 2>&1 | tee -a "$log.step" >>"$log"
  local rc=$?
  [ $rc -eq 124 ] && echo "(stopped after $STEP_S s)" | tee -a "$log.step" >>"$log"
  return $rc
}
fail() {
  say "| FAIL | $* |"
}
# Runs a command with its standard output into a file (errors in the log).
to_file() {
  local f=$1
  shift
  echo "=== [$(elapsed) s] $* > $f" >>"$log"
  "$@" >"$f" 2>>"$log"
}
# Seconds a command takes (its output in the log), or FAIL.
timed() {
  local t0 rc
  t0=$(date +%s.%N)
  : >"$log.step"
  step "$@"
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "FAIL"
    return $rc
  fi
  "$PYTHON" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)"
}

[ -x "$BIN" ] || { echo "gpu-check: no binary at $BIN (build it with scripts/gpu-build.sh)" >&2; exit 1; }
: >"$table"
say "# GPU check: $DEV, scale $SCALE"
say ""
say "- date: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
[ -f carry/BUILD.txt ] && say "- binary: $(head -2 carry/BUILD.txt | tr '\n' ' ')"
if [ "$DEV" != cpu ]; then
  if command -v nvidia-smi >/dev/null; then
    say "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  fi
  if env_line=$(scripts/gpu-env.sh "$BIN" 2>>"$log"); then
    eval "$env_line"
    say "- CUDA libraries: $LD_LIBRARY_PATH"
  else
    fail "CUDA libraries missing (see gpu-env lines in the log)"
  fi
fi
say "- CPU: $(nproc) cores; $("$BIN" --version 2>>"$log")"
say ""

# Shapes: correctness runs on every architecture with few layers (the CPU side must be quick),
# benchmarks on the real shapes.
if [ "$SCALE" = full ]; then
  small=(--layers 2)
  sweep_prompts=512; llama_prompts=128; edge_every=20; orders=16
  bench_gpt2=(--shape gpt2-small); bench_smol=(--shape smollm2-135m)
  bench_llama=(--shape llama-2-7b --dtype bf16)
  peak_sizes=8192x8192x8192; peak_f32_sizes=4096x4096x4096; seconds=1
  edge_shape=(--layers 12 --heads 12 --shape 2x8)
  mem_prompts=128; mem_caps="3000 2400 2000 1700 1500"
else
  small=(--layers 2 --heads 4 --d-model 64)
  sweep_prompts=8; llama_prompts=4; edge_every=50; orders=2
  bench_gpt2=(--shape gpt2-small --layers 2 --heads 4 --d-model 64)
  bench_smol=(--shape smollm2-135m --layers 2 --heads 4 --kv-heads 2 --d-model 64)
  bench_llama=(--shape llama-2-7b --layers 2 --heads 4 --d-model 64 --dtype bf16)
  peak_sizes=256x256x256; peak_f32_sizes=256x256x256; seconds=0.2
  edge_shape=(--layers 2 --heads 2 --shape 2x8)
  mem_prompts=8; mem_caps="64"
fi
m=$WORK/models
rm -rf "$m" && mkdir -p "$m"
say "## Models made on the spot"
say ""
say "| model | shape | seconds |"
say "|---|---|---|"
for spec in "gpt2:gpt2-small" "neox:pythia-160m" "llama:smollm2-135m"; do
  name=${spec%%:*}
  extra=()
  [ "$name" = llama ] && [ "$SCALE" != full ] && extra=(--kv-heads 2)
  say "| $name (check) | ${spec#*:} ${small[*]} ${extra[*]} | $(timed "$BIN" model init --shape "${spec#*:}" "${small[@]}" "${extra[@]}" -o "$m/$name") |"
done
say "| gpt2-small | ${bench_gpt2[*]} | $(timed "$BIN" model init "${bench_gpt2[@]}" -o "$m/gpt2-small") |"
say "| smollm2-135m | ${bench_smol[*]} | $(timed "$BIN" model init "${bench_smol[@]}" -o "$m/smollm2") |"
say "| llama-2-7b | ${bench_llama[*]} | $(timed "$BIN" model init "${bench_llama[@]}" -o "$m/llama-2-7b") |"
say ""

# ---------------------------------------------------------------------------------------------
say "## $DEV against the CPU"
say ""
say "| model | check | result | allowed | verdict |"
say "|---|---|---|---|---|"
# numerals prompts for a model in DIR/data.jsonl, with DIR/check.json. A random model prefers
# `wrong` to `answer` in about half the prompts, and a sweep refuses a model whose mean logit
# difference is not positive: each prompt the model (checked in f32 on the CPU) gets wrong has
# its two swapped, so the mean stays well above 0 whatever the device and dtype. A big model
# is checked on the device in the dtype it runs in instead.
dataset() { # model dir, prompts, out dir [, device, dtype]
  local on=(--device "${4:-cpu}" --dtype "${5:-f32}")
  mkdir -p "$3"
  step "$BIN" prompts gen numerals --model "$1" --n "$2" --seed 0 -o "$3/data.jsonl" \
    && to_file "$3/check.json" "$BIN" prompts check "$3/data.jsonl" --model "$1" --json "${on[@]}" \
    && "$PYTHON" - "$3" <<'PY'
import json, sys
out = sys.argv[1]
check = json.load(open(f"{out}/check.json"))
rows = [json.loads(l) for l in open(f"{out}/data.jsonl")]
with open(f"{out}/data.jsonl", "w") as f:
    for r, c in zip(rows, check["prompts"]):
        if c["model"]["logit_diff"] < 0:
            r["answer"], r["wrong"] = r["wrong"], r["answer"]
            c["answer_ids"], c["wrong_ids"] = c["wrong_ids"], c["answer_ids"]
            c["model"]["logit_diff"] = -c["model"]["logit_diff"]
        f.write(json.dumps(r) + "\n")
json.dump(check, open(f"{out}/check.json", "w"))
PY
}
spec_file() { # model dir, device, dtype, data file, kind, extra -> spec path
  local f=$WORK/spec-$RANDOM.toml
  printf '[model]\npath = "%s"\ndevice = "%s"\ndtype = "%s"\n[data]\nfile = "%s"\n[sweep]\nkind = "%s"\n%s\n' \
    "$(realpath "$1")" "$2" "$3" "$(realpath "$4")" "$5" "$6" >"$f"
  echo "$f"
}
# Node scores of two runs: the largest difference in percentage points, and in logits (the
# points times the full logit difference: a random model's is small, so bf16's rounding shows
# larger in points than on a trained model). f32 is held to points, bf16 to logits.
compare_nodes() { # a.json b.json allowed unit(pp|logits) -> "result | allowed | verdict"
  "$PYTHON" - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
def load(p):
    r = json.load(open(p))
    return r, [x for row in r["nodes"]["heads"] for x in row] + r["nodes"]["mlps"]
(ra, a), (_, b) = load(sys.argv[1]), load(sys.argv[2])
pp = max(abs(x - y) for x, y in zip(a, b))
logits = pp * abs(ra["full"]) / 100
got = pp if sys.argv[4] == "pp" else logits
ok = got <= float(sys.argv[3]) and len(a) == len(b)
print(f"{pp:.2e} pp ({logits:.1e} logits; full {ra['full']:.3f}) | {float(sys.argv[3]):g} {sys.argv[4]} | {'ok' if ok else 'FAIL'}")
PY
}
for name in gpt2 neox llama; do
  for p in "Mary born in 3. Mary born in 4. Mary born in" "1 2 3 4 5"; do
    if step "$BIN" predict --model "$m/$name" --json --top 10 "$p" && cp "$log.step" "$WORK/cpu.json" \
      && : >"$log.step" && step "$BIN" predict --model "$m/$name" --device "$DEV" --json --top 10 "$p" \
      && cp "$log.step" "$WORK/dev.json"; then
      line=$("$PYTHON" - "$WORK/cpu.json" "$WORK/dev.json" <<'PY'
import json, sys
def last_json(p):
    return json.loads([l for l in open(p) if l.startswith("{")][-1])
a, b = (last_json(p) for p in sys.argv[1:3])
la = {t["id"]: t["logit"] for t in a["top"]}
lb = {t["id"]: t["logit"] for t in b["top"]}
same = [t["id"] for t in a["top"]] == [t["id"] for t in b["top"]]
err = max(abs(la[i] - lb[i]) for i in set(la) & set(lb))
print(f"top-10 same order: {same}, max logit error {err:.1e} | same order, 1e-3 | {'ok' if same and err <= 1e-3 else 'FAIL'}")
PY
)
      say "| $name | logits of \"${p:0:24}...\" | $line |"
      [[ "$line" == *FAIL* ]] && failed=1
    else
      fail "$name predict on $DEV"
    fi
    : >"$log.step"
  done
  # Node scores: f32 on both, and bf16 on the device against f32 on the CPU.
  if dataset "$m/$name" 16 "$WORK/data-$name" \
    && step "$BIN" run "$(spec_file "$m/$name" cpu f32 "$WORK/data-$name/data.jsonl" nodes "")" \
      --out "$WORK/$name-cpu" --quiet; then
    for dt in f32 bf16; do
      allowed=$([ $dt = f32 ] && echo "1e-3 pp" || echo "0.02 logits")
      s=$(spec_file "$m/$name" "$DEV" $dt "$WORK/data-$name/data.jsonl" nodes "")
      if step "$BIN" run "$s" --out "$WORK/$name-$dt" --quiet; then
        # shellcheck disable=SC2086 # value and unit
        line=$(compare_nodes "$WORK/$name-cpu/result.json" "$WORK/$name-$dt/result.json" $allowed)
        say "| $name | node scores, $dt | $line |"
      else
        fail "$name node sweep on $DEV in $dt"
      fi
    done
  else
    fail "$name node sweep on the CPU"
  fi
done
say ""

# ---------------------------------------------------------------------------------------------
say "## Matmul peak through candle on $DEV"
say ""
peak() { # dtype sizes -> GFLOP/s of x w
  : >"$log.step"
  step "$BIN" bench matmul --device "$DEV" --dtype "$1" --sizes "$2" --seconds "$seconds" \
    && awk -v s="$2" '$1 == s {print $4}' "$log.step"
}
peak_bf16=$(peak bf16 "$peak_sizes"); peak_f32=$(peak f32 "$peak_f32_sizes")
say "| dtype | size | GFLOP/s |"
say "|---|---|---|"
say "| bf16 | $peak_sizes | ${peak_bf16:-FAIL} |"
say "| f32 | $peak_f32_sizes | ${peak_f32:-FAIL} |"
peak_bf16=${peak_bf16:-1}; peak_f32=${peak_f32:-1}
say ""

# ---------------------------------------------------------------------------------------------
say "## Sweeps on $DEV (model resident; MFU against the peak above)"
say ""
say "| run | components x prompts x tokens | seconds | GFLOP/s | MFU % |"
say "|---|---|---|---|---|"
sweep_row() { # label, model dir, dtype, prompts, peak
  : >"$log.step"
  if step "$BIN" bench sweep --model "$2" --device "$DEV" --dtype "$3" --task numerals \
    --prompts "$4" --no-naive --peak "$5"; then
    local head row
    head=$(grep -m1 '^node sweep of' "$log.step")
    row=$(awk '$1 == "batched" {print $3, $5, $6}' "$log.step")
    [ -n "$row" ] || { fail "$1 node sweep printed no batched row"; return; }
    read -r secs gflops mfu <<<"$row"
    say "| $1 | $(echo "$head" | sed -E 's/node sweep of ([0-9]+) components, ([0-9]+) prompts x ([0-9.]+) tokens.*/\1 x \2 x \3/') | $secs | $gflops | $mfu |"
    echo "$secs" >"$WORK/secs-$1"
  else
    fail "$1 node sweep"
  fi
}
sweep_row "gpt2-small f32" "$m/gpt2-small" f32 "$sweep_prompts" "$peak_f32"
sweep_row "gpt2-small bf16" "$m/gpt2-small" bf16 "$sweep_prompts" "$peak_bf16"
sweep_row "smollm2-135m bf16" "$m/smollm2" bf16 "$sweep_prompts" "$peak_bf16"
sweep_row "llama-2-7b bf16" "$m/llama-2-7b" bf16 "$llama_prompts" "$peak_bf16"
: >"$log.step"
if step "$BIN" bench edges "${edge_shape[@]}" --every "$edge_every" --default-every 0 \
  --device "$DEV" --dtype f32 --peak "$peak_f32"; then
  read -r edges scored _ secs rate gflops mfu _ <<<"$(awk '$1 == "random" {$1=$2=$3=$4=""; print}' "$log.step")"
  [ -n "${mfu:-}" ] || fail "edge sweep printed no row"
  say "| edge sweep, random GPT-2 (every ${edge_every}th edge) f32 | $scored of $edges edges, $rate edges/s | $secs | $gflops | $mfu |"
else
  fail "edge sweep"
fi
attr_rows() { # label, model dir, dtype
  : >"$log.step"
  if step "$BIN" bench attribution --model "$2" --device "$DEV" --dtype "$3" --task numerals \
    --prompts 8 --every 0 --shape 0; then
    local method edges secs
    while read -r method edges secs; do
      say "| attribution $method of every edge, $1 | $edges edges, 8 prompts | $secs | | |"
    done < <(awk '$(NF-5) ~ /^EAP/ {print $(NF-5), $(NF-4), $(NF-2)}' "$log.step")
    grep -q 'EAP-IG' "$log.step" || fail "$1 attribution printed no EAP-IG row"
  else
    fail "$1 attribution"
  fi
}
attr_rows "gpt2-small f32" "$m/gpt2-small" f32
attr_rows "llama-2-7b bf16" "$m/llama-2-7b" bf16
secs=FAIL
if dataset "$m/gpt2-small" 16 "$WORK/data-orders"; then
  s=$(spec_file "$m/gpt2-small" "$DEV" f32 "$WORK/data-orders/data.jsonl" orders "orders = $orders")
  secs=$(timed "$BIN" run "$s" --out "$WORK/orders" --quiet)
fi
if [ "$secs" != FAIL ]; then
  say "| order study, $orders orders, gpt2-small f32 (run, load included) | 16 prompts | $secs | $("$PYTHON" -c "print(f'{$orders * 60 / max($secs, 1e-9):.1f} orders/min')") | |"
else
  fail "order study"
fi
# Staggered passes must score, bit for bit, what passes from the lowest layer score, on the
# device too; the rows give time(K orders) / time(1) in lockstep on the default model's shape.
stagger_orders=$([ "$SCALE" = full ] && echo 1,16,128 || echo 1,2)
if step "$BIN" bench orders --model "$m/smollm2" --device "$DEV" --prompts 16 \
  --orders "$stagger_orders" --compare; then
  say "| order study lockstep, $stagger_orders orders, smollm2-135m f32, staggered = plain bit for bit | 16 prompts | see log | | |"
else
  fail "staggered order passes (bench orders --compare)"
fi
say ""

# ---------------------------------------------------------------------------------------------
say "## The naive per-head loop in PyTorch on $DEV (the machine's own torch)"
say ""
if "$PYTHON" -c 'import torch, transformers' >>"$log" 2>&1; then
  tdev=$([ "$DEV" = cpu ] && echo cpu || echo "cuda:${DEV#cuda:}")
  say "| model | dtype | components | naive loop s | circuit-sweep s | circuit-sweep is | max abs diff pp |"
  say "|---|---|---|---|---|---|---|"
  for c in "gpt2-small gpt2-small f32 float32 $sweep_prompts 0" \
    "smollm2-135m smollm2 bf16 bfloat16 $sweep_prompts 0" \
    "llama-2-7b llama-2-7b bf16 bfloat16 $llama_prompts 64"; do
    read -r label dir dt tdt n limit <<<"$c"
    d=$WORK/naive-$label && mkdir -p "$d"
    ours=$(cat "$WORK/secs-$label $dt" 2>/dev/null || echo "")
    # Scores are compared with circuit-sweep's on the same data, except on the biggest model
    # (its sweep is timed above; a second load would cost more than the comparison tells).
    result=-
    if dataset "$m/$dir" "$n" "$d" "$DEV" "$dt" \
      && if [ "$limit" = 0 ]; then
        step "$BIN" run "$(spec_file "$m/$dir" "$DEV" "$dt" "$d/data.jsonl" nodes "")" \
          --out "$d/ours" --quiet && result=$d/ours/result.json
      fi \
      && : >"$log.step" \
      && step env DEVICE="$tdev" DTYPE="$tdt" LIMIT="$limit" THREADS="$(nproc)" \
        "$PYTHON" scripts/bench_peers.py naive "$m/$dir" "$d/data.jsonl" "$d/check.json" "$result"; then
      line=$("$PYTHON" - "$log.step" "${ours:-0}" <<'PY'
import json, sys
r = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
ours = float(sys.argv[2])
timed = "" if r["timed_components"] == r["components"] else f" ({r['timed_components']} timed)"
ratio = f"{r['seconds'] / ours:.1f}x" if ours > 0 else "-"
diff = "-" if r["max_abs_diff_pp"] is None else f"{r['max_abs_diff_pp']:.2e}"
print(f"{r['dtype']} | {r['components']}{timed} | {r['seconds']:.1f} | {ours or '-'} | {ratio} | {diff} |")
PY
)
      say "| $label | $line"
    else
      fail "naive loop of $label"
    fi
  done
else
  say "(skipped: $PYTHON has no torch and transformers here)"
fi
say ""
say "## Memory on $DEV"
say ""
if [ "$DEV" != cpu ]; then
  # The same sweep sized from free memory, then with the card capped and passes as big as a
  # layer's variants: they run out of memory, are split, and the scores must not move. The
  # cap must leave room for the model and the evaluator's cached runs but not for a whole
  # pass: the largest of these caps under which a pass was split is the row.
  say "| run | passes | seconds | scores |"
  say "|---|---|---|---|"
  mem_sweep() { # scores file, extra args...
    local f=$1
    shift
    : >"$log.step"
    step "$BIN" "$@" bench sweep --model "$m/gpt2-small" --device "$DEV" --dtype f32 \
      --task numerals --prompts "$mem_prompts" --no-naive --peak "$peak_f32" --scores "$f"
  }
  if mem_sweep "$WORK/mem-free.json"; then
    say "| gpt2-small f32, $mem_prompts prompts, sized from free memory | $(grep -m1 '^passes of up to' "$log.step" | cut -c17-) | $(awk '$1 == "batched" {print $3}' "$log.step") | reference |"
    done_cap=""
    for cap in $mem_caps; do
      if ! mem_sweep "$WORK/mem-capped.json" --gpu-memory-mb "$cap" --batch-tokens 4000000 --fixed-batch; then
        echo "(cap $cap MiB: the sweep did not run; a larger cap is the row)" >>"$log"
        break
      fi
      splits=$(sed -n 's/.*after \([0-9]*\) split.*/\1/p' "$log.step")
      cp "$log.step" "$WORK/mem-capped.log"
      done_cap=$cap
      [ "${splits:-0}" -gt 0 ] && break
    done
    if [ -n "$done_cap" ]; then
      # Identical on the CPU's kernels; cuBLAS may pick other kernels for other pass sizes.
      verdict=$("$PYTHON" - "$WORK/mem-free.json" "$WORK/mem-capped.json" 2>>"$log" <<'PY' || echo FAIL
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
d = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
print("identical" if a == b else f"differ by up to {d:.1e} pp" + ("" if d <= 1e-3 else ": FAIL"))
PY
)
      [ "${splits:-0}" -gt 0 ] || verdict="$verdict; no pass ran out of memory under any cap: FAIL"
      say "| same, $done_cap MiB usable, passes of a layer's variants | $(grep -m1 '^passes of up to' "$WORK/mem-capped.log" | cut -c17-) | $(awk '$1 == "batched" {print $3}' "$WORK/mem-capped.log") | $verdict |"
    else
      fail "sweep under every cap in: $mem_caps MiB"
    fi
  else
    fail "sweep sized from free memory"
  fi
  # A 7B model resident while a job's shards stream through the in-process coordinator (the
  # first 32 prompts of the naive loop's data: no other load of the model to check them).
  d7=$WORK/naive-llama-2-7b
  if [ -f "$d7/data.jsonl" ] || dataset "$m/llama-2-7b" 32 "$d7" "$DEV" bf16; then
    head -32 "$d7/data.jsonl" >"$WORK/data-7b.jsonl"
    s=$(spec_file "$m/llama-2-7b" "$DEV" bf16 "$WORK/data-7b.jsonl" nodes "")
    say "| llama-2-7b bf16 resident, a node sweep's shards through \`run\`, 32 prompts | - | $(timed "$BIN" run "$s" --out "$WORK/run-7b" --quiet) (load included) | - |"
  else
    fail "7B dataset"
  fi
else
  say "(GPU only: the CPU cannot be capped, and runs out of memory by aborting.)"
fi
say ""
say "## NCCL on $DEV"
say ""
if [ "$DEV" != cpu ]; then
  : >"$log.step"
  if step "$BIN" bench nccl --device "$DEV"; then
    say "- $(grep -m1 '^NCCL' "$log.step")"
  else
    fail "NCCL one-rank all-reduce: $(tail -1 "$log.step")"
  fi
else
  say "(GPU only.)"
fi
say ""
say "Not built yet: a tensor-parallel worker group for models larger than one GPU."
say ""
grep -q FAIL "$table" && failed=1
say "Finished in $(elapsed) s; $([ $failed = 0 ] && echo 'every check passed' || echo 'SOME CHECKS FAILED (see the log)')."
rm -f "$log.step"
exit $failed
