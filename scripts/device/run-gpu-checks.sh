#!/usr/bin/env bash
# On a lent GPU machine (see stage-gpu-checks.sh, which prepares .device/): installs the staged Node,
# modules and platform packages into this checkout, then records under $OUT what the loader chooses
# (doctor --json), the GPU suite (test/gpu: Block Influence, eval, generation, training with every
# layer offloaded, against the CPU build) and the GPU-vs-CPU benchmark (scripts/bench/gpu.ts).
# Each step has its own time limit and log; a failed step does not stop the next.
#
#   OUT=/tmp/out bash scripts/device/run-gpu-checks.sh [tests|bench|all]
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
what=${1:-all}
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.log"; }

log "unpacking"
python3 - <<'EOF'
import lzma, shutil, tarfile, os
with lzma.open(".device/node.xz") as src, open("/tmp/node-bin", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod("/tmp/node-bin", 0o755)
with tarfile.open(".device/bundle.tar.xz", "r:xz") as t:
    t.extractall(".device/unpacked")
EOF
mkdir -p /tmp/node-path && ln -sf /tmp/node-bin /tmp/node-path/node
export PATH=/tmp/node-path:$PATH
rm -rf node_modules dist && mv .device/unpacked/node_modules .device/unpacked/dist .
mkdir -p node_modules/@ppc-gpt && cp -r .device/unpacked/pkg/linux-x64 .device/unpacked/pkg/linux-x64-cuda node_modules/@ppc-gpt/
export PPC_SHARED_DIR=$root/.device/unpacked/shared PPC_GPT_CACHE_DIR=/tmp/ppc-gpt-cache
export PPC_GPT_CPU_NATIVE=$root/node_modules/@ppc-gpt/linux-x64/ppc_gpt.node

# the driver's libcuda and the newest cuBLAS the machine has (the forwarding libcublas.so.11 loads it)
libcuda=$(ldconfig -p | grep -m1 'libcuda.so.1 ' | sed 's/.*=> //')
[ -n "$libcuda" ] || libcuda=$(find / -xdev -name 'libcuda.so.1' 2>/dev/null | head -1)
cublas=$(find /usr /opt -name 'libcublas.so.1[23]*' 2>/dev/null | sort -r | head -1)
export PPC_CUBLAS_FORWARD=$cublas
export LD_LIBRARY_PATH=$root/.device/cublas-forward:$(dirname "$cublas"):$(dirname "${libcuda:-/x/x}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{
    echo "node $(node --version); libcuda: ${libcuda:-none}; forwarding cuBLAS 11 to: ${cublas:-none}"
    echo "/proc/driver/nvidia/gpus: $(ls /proc/driver/nvidia/gpus 2>&1 | tr '\n' ' ')"
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
    grep -m1 'model name' /proc/cpuinfo; nproc
    cat /etc/os-release | head -2
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

log "doctor"
timeout 120 node dist/ts/cli/main.js doctor --json > "$OUT/doctor.json" 2> "$OUT/doctor.err"
echo "doctor exit $?"
node -e 'const n = require(process.argv[1]).native; for (const c of n.candidates) console.log(`${c.status}: ${c.label}: ${c.reason}`)' "$OUT/doctor.json"
chosen=$(node -e 'console.log(require(process.argv[1]).native.chosen?.label ?? "none")' "$OUT/doctor.json" 2>/dev/null)
if [ "$chosen" != "@ppc-gpt/linux-x64-cuda" ]; then
    echo "the loader chose ${chosen:-nothing}, not the CUDA package: the checks below load it by PPC_GPT_NATIVE" | tee -a "$OUT/steps.log"
    export PPC_GPT_NATIVE=$root/node_modules/@ppc-gpt/linux-x64-cuda/ppc_gpt.node
fi

if [ "$what" = all ] || [ "$what" = tests ]; then
    log "GPU suite"
    timeout 300 node node_modules/ava/entrypoints/cli.mjs --config ava.gpu.config.mjs > "$OUT/test-gpu.log" 2>&1
    echo "GPU suite exit $?" | tee -a "$OUT/steps.log"
    grep -E "✔|✘|ℹ|passed|failed|Error" "$OUT/test-gpu.log" | head -80
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
    log "benchmark"
    timeout 240 node dist/scripts/bench/gpu.js --runs 2 --dir /tmp/gpu-bench > "$OUT/bench-gpu.md" 2> "$OUT/bench-gpu.err"
    echo "benchmark exit $?" | tee -a "$OUT/steps.log"
    cat "$OUT/bench-gpu.md"; tail -5 "$OUT/bench-gpu.err"
fi
log "done"
