#!/usr/bin/env bash
# CPU benchmarks behind the README's tables, ours and llama.cpp side by side in one run.
# Usage: scripts/bench-cpu.sh [OUTFILE]   (JSON lines; default: stdout)
# Writes the benchmark models into .models/ first when they are missing (dim 1024, 16 layers, 16 heads, 4 KV heads,
# ffn 2816, vocab 512). Run on an otherwise idle machine; each measurement is the best of three warm passes (the first
# pass of each process is not counted), decode over 64 generated tokens at batch 1 and 32 at batch 8; the Q4_0, F16, BF16 and
# other-type runs (32 generated tokens) and the 1,024-token prompt run (Q4_K_M) count one warm pass. Every line names
# the CPU (family, model); batch-1 lines of ours add the ceiling, min(bandwidth roofline, compute roofline), with the
# in-cache rate of each weight type's kernel, and decode_ceiling_fraction. The read bandwidth is measured over the
# model's weight bytes per token (footprint_read_gb_s: from the last-level cache where they fit, llc_mib) and over a
# 1 GiB ring (dram_read_gb_s), before each counted pass and after the last (footprint_read_gb_s_all,
# dram_read_gb_s_all); the fractions use the highest, decode_ceiling_fraction_adjacent the higher of the two beside
# each pass. run_queue_wait_ms_per_step near 0 says no other work preempted the decode.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/dev/stdout}
threads=${THREADS:-2}
dotnet build -c Release Inference.Benchmarks -v q -nologo >/dev/null
bench() { dotnet Inference.Benchmarks/bin/Release/net10.0/Inference.Benchmarks.dll "$@"; }
more_types="q6_k q5_k q4_1 q5_0 q5_1 iq4_nl iq4_xs q3_k q2_k"
for t in q8_0 q4_k f32 q4_0 f16 bf16 $more_types; do
  [ -f .models/bench-$t.gguf ] || bench write-model --out .models/bench-$t.gguf --type $t >&2
done
: > "$out.tmp"

for t in q8_0 q4_k f32; do
  for engine in inference llama.cpp; do
    bench e2e --model .models/bench-$t.gguf -p 128 -n 64 --batch 1 --threads "$threads" --engine $engine --repeat 4 | tee -a "$out.tmp"
  done
done
# the other common weight types, shorter runs
for t in q4_0 f16 bf16; do
  for engine in inference llama.cpp; do
    bench e2e --model .models/bench-$t.gguf -p 128 -n 32 --batch 1 --threads "$threads" --engine $engine --repeat 2 | tee -a "$out.tmp"
  done
done
# every other weight type llama.cpp's presets write (Q6_K, Q5_K_M, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, Q3_K_M, Q2_K), shorter runs
for t in $more_types; do
  for engine in inference llama.cpp; do
    bench e2e --model .models/bench-$t.gguf -p 128 -n 32 --batch 1 --threads "$threads" --engine $engine --repeat 2 | tee -a "$out.tmp"
  done
done
# a long context, where attention over the cache is a large part of each decode step
for engine in inference llama.cpp; do
  bench e2e --model .models/bench-q4_k.gguf -p 1024 -n 64 --batch 1 --threads "$threads" --engine $engine --repeat 2 | tee -a "$out.tmp"
done
for engine in inference llama.cpp; do
  bench e2e --model .models/bench-q8_0.gguf -p 128 -n 32 --batch 8 --threads "$threads" --engine $engine --repeat 4 | tee -a "$out.tmp"
done
# a float model as stored, quantized at load (Q8_0, Q4_K_M) and quantized ahead, beside llama.cpp on the same files:
# load time (ready_s) and decode; the Markdown table goes to stderr
bench quantization --model .models/bench-f16.gguf --threads "$threads" -n 64 --repeat 2 | tee -a "$out.tmp"
bench kv-waste | tee -a "$out.tmp"
bench prefix --model .models/bench-q8_0.gguf --shared-prefix-tokens 1024 --suffix-tokens 32 --threads "$threads" | tee -a "$out.tmp"
[ "$out" = /dev/stdout ] && rm -f "$out.tmp" || mv "$out.tmp" "$out"
