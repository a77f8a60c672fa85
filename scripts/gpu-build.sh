#!/usr/bin/env bash
# Builds the CUDA release binary on this machine (no GPU needed) for a GPU machine that has no
# Rust toolchain and no network, and puts it in carry/ (ignored) to travel with the working tree:
#
#   scripts/gpu-build.sh            # -> carry/circuit-sweep.xz, carry/BUILD.txt
#
# The stripped binary is about 70 MiB (candle's compiled CUDA kernels), more than may travel,
# so it travels xz-compressed (about 11 MiB); scripts/gpu-check.sh unpacks it with python3.
# The binary (features cuda and nccl) links libcuda from the GPU machine's driver and cuBLAS,
# cuRAND, the CUDA runtime and NCCL from its CUDA libraries (scripts/gpu-env.sh finds them); candle's kernels are compiled
# for compute capability 9.0 (Hopper) unless CUDA_COMPUTE_CAP says otherwise. The working tree
# and everything carried must stay under LIMIT_MB (64 MiB by default) in all.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MB=${LIMIT_MB:-64}
OUT_DIR=${OUT_DIR:-carry}
eval "$(scripts/cuda-toolkit.sh)"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# Its own target folder: the CPU binary in target/release stays as it is.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
start=$(date +%s)
cargo build --release --locked --features cuda,nccl --bin circuit-sweep
secs=$(( $(date +%s) - start ))
mkdir -p "$OUT_DIR"
bin="$CARGO_TARGET_DIR/circuit-sweep.stripped"
strip -o "$bin" "$CARGO_TARGET_DIR/release/circuit-sweep"
packed="$OUT_DIR/circuit-sweep.xz"
rm -f "$OUT_DIR/circuit-sweep"
xz -9 -T0 -c "$bin" >"$packed.part" && mv "$packed.part" "$packed"

needed=$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
# What the GPU machine must provide: the driver's libcuda, and the CUDA libraries that
# candle links or opens at run time (cudarc may load them with dlopen rather than link them).
cuda_libs=$(strings "$bin" | grep -oE 'lib(cuda|cublas|cublasLt|curand|nvrtc|nccl)\.so(\.[0-9]+)*' \
  | sort -u | tr '\n' ' ')
bin_mb=$(( $(stat -c %s "$bin") / 1048576 ))
packed_mb=$(( ($(stat -c %s "$packed") + 1048575) / 1048576 ))
# What travels besides the carried folder: tracked files and untracked files git does not ignore.
tree_mb=$(( $( { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true; } \
  | awk '{s += $1} END {print s + 0}') / 1048576 ))
total=$(( packed_mb + tree_mb ))
{
  echo "built: $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
  echo "build time: ${secs} s (cargo build --release --features cuda,nccl, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "binary: ${bin_mb} MiB stripped, $packed ${packed_mb} MiB"
  echo "working tree: ${tree_mb} MiB; with the packed binary ${total} MiB of ${LIMIT_MB}"
  echo "linked: $needed"
  echo "CUDA libraries named in it: $cuda_libs"
} | tee "$OUT_DIR/BUILD.txt"
if [ "$total" -ge "$LIMIT_MB" ]; then
  echo "gpu-build: the tree and the packed binary are ${total} MiB, over the ${LIMIT_MB} MiB that travel" >&2
  exit 1
fi
