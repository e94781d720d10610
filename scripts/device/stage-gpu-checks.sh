#!/usr/bin/env bash
# Prepares .device/ (git-ignored) for run-gpu-checks.sh on a lent GPU machine that has no Node, no
# npm registry and no cuBLAS 11, and takes at most 64 MiB of files along:
#   node.xz           this machine's Node binary (stripped)
#   bundle.tar.xz     node_modules without compilers and node-llama-cpp's binaries, dist/ without
#                     maps and declarations, stories260K and ARC from ../shared, and the platform
#                     packages unpacked from their npm tarballs: pkg/linux-x64 (CPU, the references)
#                     and pkg/linux-x64-cuda (prune-cuda-build.sh makes a one-architecture build
#                     that fits the 64 MiB)
#   cublas-forward/   libcublas.so.11 forwarding to the machine's newer cuBLAS, and an empty
#                     libcublasLt.so.11 (cublas11-forward.c says why)
#
#   scripts/device/stage-gpu-checks.sh --cuda-build build-cuda [--cpu-build build]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cuda_build="" cpu_build="build"
while [ $# -gt 0 ]; do
    case "$1" in
        --cuda-build) cuda_build=$2; shift 2 ;;
        --cpu-build) cpu_build=$2; shift 2 ;;
        *) echo "stage-gpu-checks: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$cuda_build" ] || { echo "stage-gpu-checks: --cuda-build DIR is required" >&2; exit 2; }
shared=${PPC_SHARED_DIR:-$root/../shared}
out=.device
grep -qx "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
mkdir -p "$out"

if [ ! -f "$out/node.xz" ]; then
    strip -o "$out/node" "$(command -v node)"
    xz -T0 -9 "$out/node"
fi

rm -rf "$out/bundle" "$out/packages" && mkdir -p "$out/bundle/shared/models" "$out/bundle/shared/data" "$out/bundle/pkg"
cp "$shared/models/stories260K.gguf" "$out/bundle/shared/models/"
cp -r "$shared/data/arc" "$out/bundle/shared/data/"
node scripts/pack-packages.mjs --no-main --cpu-build "$cpu_build" --cuda-build "$cuda_build" --out "$out/packages"
for name in linux-x64 linux-x64-cuda; do
    mkdir -p "$out/bundle/pkg/$name"
    tar -xzf "$out/packages/ppc-gpt-$name-"[0-9]*.tgz -C "$out/bundle/pkg/$name" --strip-components=1
done
rm -rf "$out/packages"
tar -cf - --exclude='node_modules/@node-llama-cpp' --exclude='node_modules/node-llama-cpp/llama' \
    --exclude='node_modules/typescript' --exclude='node_modules/@typescript' --exclude='node_modules/@types' \
    --exclude='node_modules/@ppc-gpt' --exclude='node_modules/.cache' --exclude='*.map' --exclude='*.d.ts' \
    node_modules dist -C "$out/bundle" shared pkg | xz -T0 -6 > "$out/bundle.tar.xz"
rm -rf "$out/bundle"

mkdir -p "$out/cublas-forward"
gcc -O2 -Wall -shared -fPIC -o "$out/cublas-forward/libcublas.so.11" -Wl,-soname,libcublas.so.11 \
    -Wl,--version-script=scripts/device/cublas11-forward.map scripts/device/cublas11-forward.c -ldl
echo "" | gcc -x c -shared -fPIC -o "$out/cublas-forward/libcublasLt.so.11" -Wl,-soname,libcublasLt.so.11 -

du -ab "$out" | sort -n | tail -8
total=$(du -sb "$out" | cut -f1)
echo "stage-gpu-checks: $out holds $((total / 1048576)) MiB (the device takes 64 MiB with the working tree)"
