#!/usr/bin/env bash
# Relinks a CUDA build's addon with the device code of one architecture only, into OUT/Release
# (ppc_gpt.node and its build record, archs updated): a smaller binary to carry to a device check.
# nvprune works on objects and static libraries, not on the linked addon, so the addon's link
# command (from the build's ninja file) runs again on pruned copies of ggml's CUDA library and of
# ppc-gpt's CUDA object.
#
#   scripts/device/prune-cuda-build.sh build-cuda 90 /tmp/cuda-sm90
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: prune-cuda-build.sh BUILD_DIR ARCH OUT_DIR" >&2; exit 2; }
build=$(cd "$1" && pwd)
arch=$2
mkdir -p "$3/Release" "$3/pruned"
out=$(cd "$3" && pwd)
cmd=$(ninja -C "$build" -t commands Release/ppc_gpt.node | tail -1)
for f in llama.cpp/ggml/src/ggml-cuda/libggml-cuda.a CMakeFiles/ppc_gpt_native.dir/cuda/layer_stats.cu.o; do
    nvprune --arch "sm_$arch" "$build/$f" -o "$out/pruned/$(basename "$f")"
    [[ $cmd == *" $f "* ]] || { echo "prune-cuda-build: $f is not in the link command" >&2; exit 1; }
    cmd=${cmd//" $f "/" $out/pruned/$(basename "$f") "}
done
cmd=${cmd//"-o Release/ppc_gpt.node"/"-o $out/Release/ppc_gpt.node"}
(cd "$build" && eval "$cmd")
node -e 'const fs = require("fs"), [from, to, arch] = process.argv.slice(1), r = JSON.parse(fs.readFileSync(from, "utf8"));
    r.cuda.archs = [`${arch}-real`]; r.cuda.prunedFrom = from; fs.writeFileSync(to, JSON.stringify(r, null, 2) + "\n")' \
    "$build/Release/ppc_gpt.json" "$out/Release/ppc_gpt.json" "$arch"
rm -rf "$out/pruned"
ls -la "$out/Release"
