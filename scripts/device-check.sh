#!/usr/bin/env bash
# GPU device check in two explicit phases.
#
#   Phase 1, on a development machine with the .NET SDK (no GPU needed):
#       scripts/device-check.sh --pack
#     publishes scripts/gpu-runner (the `gpu` mode of Inference.Benchmarks without BenchmarkDotNet/LLamaSharp) as a
#     self-contained linux-x64 app (no trimming: it breaks ILGPU) and packs it as
#     .device/inference-gpu-runner.tgz (git-ignored, ~40 MB), with the 32,000-token llama vocabulary
#     (../shared/testdata/vocab/ggml-vocab-llama-spm.gguf, 0.7 MB) the end-to-end model is written with.
#
#   Phase 2, on the GPU machine (needs only the NVIDIA driver; no .NET, no CUDA toolkit), from the repository root:
#       scripts/device-check.sh --run OUTDIR [--quick] [--no-e2e] [--tgz PATH]
#     (or just scripts/device-check.sh OUTDIR [options], which also packs first where the .NET SDK is present)
#     unpacks the runner into a temporary folder and runs it:
#       - checks: PTX vs ILGPU vs reference paged attention (the same cases as Inference.Tests/Cuda),
#       - benchmark: decode attention, f16 KV, batch 1/16/64 × context 1k/4k/16k (--quick: 1k/4k), PTX and ILGPU,
#         achieved KV GB/s next to a device-to-device copy measured in the same run,
#       - tensor-core GEMM: the 0.85B model's F16 products at M = 64/512/4096 (--quick: 64/512), TFLOP/s next to the
#         card's dense FP16 peak, the F16 row kernel's time, and agreement with the row kernel (max rel diff <= 1e-4),
#       - block weights on the tensor cores: the same shapes in Q8_0 and each type widened in the kernel (gemm_q8_0,
#         gemm_q4_0 ... gemm_q6_k) against the slab path (widen, then gemm_f16): times and bit equality (gemm_blocks.tsv),
#       - flash prefill attention: one layer of the 0.85B model (32/8 heads, head dim 64, f16 KV) for 64 x 512-token
#         prompts (--quick: 16), prompt tokens/s next to the per-token PTX kernel, agreement within 5e-3 (flash.tsv),
#       - stories260K on the GPU engine: llama2.c's 200-token greedy text, 16 concurrent requests = solo,
#       - end to end (skip with --no-e2e): writes a random-weight 0.85B GQA F16 model (dim 2048, 16 layers, 32/8 heads,
#         ffn 5632, vocab 32000; --quick: 4 layers) into a temporary folder, compares the GPU engine's last-position
#         logits with the CPU engine's (relative L2, target < 5e-3) with PTX and ILGPU attention (tensor-core F16
#         products for 16+ rows) and with PTX attention on the row kernels only, and measures GPU
#         decode tokens/s for 1 and for 16 concurrent requests through the engine; decode captured as CUDA graphs
#         (CudaOptions.EnforceEager = false) next to eager decode, greedy 128 tokens (--quick: 32) for 1 and for 64
#         concurrent requests, tokens compared request by request, tok/s of both (decode_graph_* lines of e2e.tsv;
#         a failed capture fails the check), and the same on a random-weight qwen3moe F16 model (8 experts, top 2;
#         decode_graph_moe_* lines); then the same for a Q4_K_M copy
#         quantized on the GPU machine (weights kept as Q4_K/Q6_K blocks on the device; logits target < 8e-2, the CPU
#         rounds activations to Q8_K); and for a Q8_0 copy and the Q4_K_M copy, prefill of 64 x 512-token prompts
#         (--quick: 16) with CudaOptions.QuantizedTensorCoreMatMul on and off: prompt tokens/s, first tokens on = off,
#         the first prompt's greedy tokens vs the CPU engine. Needs ~3 GB of temporary disk; nothing beyond the runner is carried.
#     Writes OUTDIR/{device.txt,checks.tsv,bench.tsv,matmul.tsv,gemm.tsv,gemm_blocks.tsv,flash.tsv,e2e.tsv,summary.md,nvidia-smi.txt,runner.log}.
#     Exit status: 0 all checks passed, 1 a check failed, 2 no CUDA device, other: runner crashed.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
tgz="$repo_root/.device/inference-gpu-runner.tgz"

usage() {
  sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

pack() {
  local publish="$repo_root/.device/publish"
  rm -rf "$publish"
  mkdir -p "$repo_root/.device"
  dotnet publish "$repo_root/scripts/gpu-runner" -c Release -r linux-x64 --self-contained true \
    -p:PublishTrimmed=false -p:DebugType=none -o "$publish/inference-gpu-runner" -nologo -v quiet
  cp "$repo_root/../shared/testdata/vocab/ggml-vocab-llama-spm.gguf" "$publish/inference-gpu-runner/vocab-llama-spm.gguf"
  cp "$repo_root/../shared/testdata/stories260K.gguf" "$repo_root/../shared/testdata/expected/stories260K-greedy-200.json" \
    "$publish/inference-gpu-runner/"
  tar -C "$publish" -czf "$tgz" inference-gpu-runner
  rm -rf "$publish"
  echo "packed $(du -h "$tgz" | cut -f1) $tgz"
}

run() {
  local out="" quick="" e2e=""
  while (( $# > 0 )); do
    case "$1" in
      --quick) quick="--quick" ;;
      --no-e2e) e2e="--no-e2e" ;;
      --tgz) shift; tgz="$1" ;;
      *) out="$1" ;;
    esac
    shift
  done
  [[ -n "$out" ]] || usage
  [[ -f "$tgz" ]] || { echo "error: $tgz not found; run --pack first (on a machine with the .NET SDK)" >&2; exit 3; }
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  tar -C "$work" -xzf "$tgz"
  # NOTE: ILGPU opens the driver as "libcuda.so"; driver-only installs and containers may ship just libcuda.so.1.
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
    local so1
    so1="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')"
    [[ -n "$so1" ]] || so1="$(find /usr/lib /usr/lib64 /usr/local /lib -name 'libcuda.so.1' 2>/dev/null | head -n 1)"
    if [[ -n "$so1" ]]; then
      mkdir -p "$work/lib"
      ln -s "$so1" "$work/lib/libcuda.so"
      export LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "device-check: using $so1 as libcuda.so"
    fi
  fi
  (nvidia-smi || echo "nvidia-smi not available") >"$out/nvidia-smi.txt" 2>&1
  set +e
  "$work/inference-gpu-runner/inference-gpu-runner" gpu "$out" $quick $e2e 2>&1 | tee "$out/runner.log"
  local rc=${PIPESTATUS[0]}
  set -e
  echo "device-check: runner exit status $rc; results in $out"
  exit "$rc"
}

case "${1:-}" in
  --pack) pack ;;
  --run) shift; run "$@" ;;
  ""|-h|--help) usage ;;
  *)
    # scripts/device-check.sh OUTDIR [options]: --run, packing first where the runner is missing and .NET is here.
    if [[ ! -f "$tgz" ]] && command -v dotnet >/dev/null; then pack; fi
    run "$@" ;;
esac
