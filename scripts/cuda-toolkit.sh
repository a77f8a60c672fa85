#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler toolchain (nvcc, cicc, headers, runtime, cuBLAS, cuRAND) and
# NCCL from PyPI wheels into DIR (default: .cuda in the repository), so the CUDA binary builds
# on a machine without a GPU or a system toolkit, and prints the environment to build with:
#
#   eval "$(scripts/cuda-toolkit.sh)"
#   cargo build --release --features cuda        # or cuda,nccl
#
# 13.0 stays within what the GPU machines' driver (580) runs. About 1.5 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-.cuda}")
root="$dir/py/nvidia/cu13"
if [ ! -x "$root/bin/nvcc" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir/py" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" >&2
fi
# NCCL in a folder of its own: pip does not add a package into an existing --target tree.
nccl="$dir/nccl/nvidia/nccl"
if [ ! -e "$nccl/lib/libnccl.so.2" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir/nccl" \
    "nvidia-nccl-cu13==2.*" >&2
fi
# The wheels ship only versioned libraries: the linker wants the plain names.
for f in "$root"/lib/lib*.so.* "$nccl"/lib/lib*.so.*; do
  base="${f%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$f")" "$base"
done
# No libcuda link stub comes with them (the driver provides libcuda): make one for the linker
# that defines every driver function of cuda.h under the name the driver exports (the header's
# macros give the versioned ones, cuMemAlloc -> cuMemAlloc_v2), named like the driver's library
# so the binary loads the real one on the GPU machine. A stub function that were ever called
# would return CUDA_ERROR_UNKNOWN.
stub=$root/lib/stubs/libcuda.so
if ! nm -D "$stub" 2>/dev/null | grep -q ' T cuEventCreate$'; then
  mkdir -p "$root/lib/stubs"
  names=$(grep -oE 'CUDAAPI cu[A-Za-z0-9_]+\(' "$root/include/cuda.h" | sed 's/CUDAAPI //; s/($//' | sort -u)
  versioned=$(awk '{print "@@ " $0}' <<<"$names" | cc -E -P -include cuda.h -I"$root/include" -x c - \
    | sed -n 's/^@@ //p')
  printf '%s\n%s\n' "$names" "$versioned" | sort -u | sed 's/.*/int &(void) { return 999; }/' \
    | cc -shared -x c - -Wl,-soname,libcuda.so.1 -o "$stub"
fi
echo "export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root"
echo "export PATH=$root/bin:\$PATH"
echo "export LIBRARY_PATH=$root/lib:$root/lib/stubs:$nccl/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
