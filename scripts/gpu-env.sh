#!/usr/bin/env bash
# On a GPU machine without a CUDA toolkit in the usual places: finds the CUDA libraries that a
# carried binary needs and prints the environment to run it with:
#
#   eval "$(scripts/gpu-env.sh carry/circuit-sweep)"
#
# The libraries it needs are the ones it links (readelf) and the ones it opens at run time
# (their names are in the binary); GPU_LIBS="libx.so.1 ..." replaces that list. Each is looked
# for in python3's nvidia-* packages (PyTorch's CUDA libraries), then in CUDA_HOME, the usual
# toolkit folders and the driver's folders; never in a toolkit's stubs/ folder, whose libcuda
# is a link stub that loads and fails at the first call. Exits 1 naming every library it
# could not find.
set -euo pipefail
bin=${1:?usage: gpu-env.sh BINARY}
[ -f "$bin" ] || { echo "gpu-env: no binary at $bin" >&2; exit 1; }
PYTHON=${PYTHON:-python3}

if [ -n "${GPU_LIBS:-}" ]; then
  libs=$GPU_LIBS
else
  linked=$(readelf -d "$bin" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' \
    | grep -E '^lib(cuda|cublas|cublasLt|curand|nvrtc|nccl|cudart)\.so' || true)
  opened=$(strings "$bin" | grep -oE '^lib(cuda|cublas|cublasLt|curand|nvrtc|nccl)\.so(\.[0-9]+)+$' || true)
  libs=$(printf '%s\n%s\n' "$linked" "$opened" | awk 'NF' | sort -u | tr '\n' ' ')
fi

# Folders to search, in order.
dirs=()
if command -v "$PYTHON" >/dev/null 2>&1; then
  while IFS= read -r d; do [ -n "$d" ] && dirs+=("$d"); done < <("$PYTHON" - <<'PY' 2>/dev/null || true
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
seen = []
for root in list(nvidia.__path__):
    for lib in sorted(glob.glob(os.path.join(root, "**", "lib"), recursive=True)):
        if os.path.isdir(lib) and lib not in seen:
            seen.append(lib)
print("\n".join(seen))
PY
)
fi
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  [ -n "$d" ] && dirs+=("$d/lib64" "$d/lib" "$d/targets/x86_64-linux/lib")
done
dirs+=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib)

found=()
missing=()
for lib in $libs; do
  hit=""
  for d in "${dirs[@]}"; do
    if [ -e "$d/$lib" ]; then hit=$d; break; fi
  done
  # (grep -q may stop reading early: with pipefail a pipe would then fail.)
  if [ -z "$hit" ] && grep -q " $lib " < <(ldconfig -p 2>/dev/null); then
    hit=system
  fi
  if [ -z "$hit" ]; then
    missing+=("$lib")
  elif [ "$hit" != system ] && [ "$hit" != /usr/lib/x86_64-linux-gnu ] && [ "$hit" != /usr/lib64 ]; then
    found+=("$hit")
  fi
  echo "gpu-env: $lib -> ${hit:-NOT FOUND}" >&2
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu-env: not found: ${missing[*]} (searched python3's nvidia packages, CUDA_HOME, /usr/local/cuda and the driver's folders)" >&2
  exit 1
fi
path=$(printf '%s\n' "${found[@]}" | awk 'NF && !seen[$0]++' | paste -sd: -)
echo "export LD_LIBRARY_PATH=${path}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
