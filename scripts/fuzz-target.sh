#!/usr/bin/env bash
# Coverage-guided fuzzing of one untrusted-input parser with AFL++ and SharpFuzz.
#
# Needs: afl++ (apt-get install afl++), the SharpFuzz instrumenter
#   (dotnet tool install --global SharpFuzz.CommandLine --version 2.3.0), and ../shared/testdata (seeds, tokenizers).
# Usage: scripts/fuzz-target.sh TARGET [EXECUTIONS] [MAX_SECONDS]   (defaults: 1000000 executions, at most 3600 s)
#   TARGET: gguf (GGUF headers), template (chat templates), tokenizer (text through five real tokenizers),
#           vocab (GGUF vocabularies loaded as tokenizers), request (the server's chat/completions JSON),
#           constraint (a regex, GBNF grammar or JSON schema, compiled, then bytes walked through its automaton)
#   INFERENCE_FUZZ_SELFTEST=1 scripts/fuzz-target.sh gguf 1000 60   makes every input throw: afl-fuzz must stop at its
#   dry run reporting a crash, which proves that crashes are detected at all.
#   The harness runs the inputs out of process (SharpFuzz's OutOfProcess fork server), so an input that overflows the
#   stack or times out is saved as a crash or hang instead of ending the campaign; INFERENCE_FUZZ_IN_PROCESS=1 uses
#   the plain fork server (one process, fewer context switches).
# Output: artifacts/fuzz-TARGET/findings (AFL's queue, crashes/, hangs/, fuzzer_stats). At the end the saved queue,
# crashes and hangs are replayed through the uninstrumented harness (contract breaks printed with their exception, and
# the slowest input); crashes and hangs name each input before it runs, so one that ends the process is named.
set -euo pipefail

TARGET="${1:?usage: scripts/fuzz-target.sh TARGET [EXECUTIONS] [MAX_SECONDS]}"
EXECS="${2:-1000000}"
MAX_SECONDS="${3:-3600}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/artifacts/fuzz-$TARGET"
BIN="$OUT/bin"          # instrumented copy, only usable under afl-fuzz
PLAIN="$OUT/bin-plain"  # uninstrumented copy: seeds and replays
export PATH="$PATH:$HOME/.dotnet/tools"
export INFERENCE_TESTDATA="$ROOT/../shared/testdata"

rm -rf "$BIN" "$PLAIN" "$OUT/seeds"
mkdir -p "$OUT"
dotnet publish "$ROOT/fuzz/Inference.Fuzz/Inference.Fuzz.csproj" -c Release -o "$PLAIN" --nologo -v quiet
cp -r "$PLAIN" "$BIN"
# Instrument only the code under test (in place, in the fuzzing copy).
sharpfuzz "$BIN/Inference.Core.dll"
if [[ "$TARGET" == "request" ]]; then sharpfuzz "$BIN/Inference.Server.dll"; fi

INFERENCE_FUZZ_TEMPLATE_SOURCES="$ROOT/Inference.Tests/Chat" \
  dotnet "$PLAIN/Inference.Fuzz.dll" --target "$TARGET" --make-seeds "$INFERENCE_TESTDATA" "$OUT/seeds"
# Sanity check: every seed meets the contract outside the fuzzer.
env -u INFERENCE_FUZZ_SELFTEST dotnet "$PLAIN/Inference.Fuzz.dll" --target "$TARGET" --replay "$OUT/seeds"

# NOTE: dotnet itself is not instrumented (SharpFuzz reports coverage from the managed code), so the binary check is
# skipped; the remaining variables make AFL++ run on a shared machine without root-only system tuning.
export AFL_SKIP_BIN_CHECK=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_FAST_CAL=1
export DOTNET_TieredPGO=0
RESUME="-i $OUT/seeds"
if [[ -d "$OUT/findings/default/queue" ]]; then RESUME="-i -"; fi
timeout "$((MAX_SECONDS + 120))" afl-fuzz $RESUME -o "$OUT/findings" -t 5000 -m none -E "$EXECS" -V "$MAX_SECONDS" \
  -- dotnet "$BIN/Inference.Fuzz.dll" --target "$TARGET" || true

STATS="$OUT/findings/default/fuzzer_stats"
grep -E '^(start_time|last_update|run_time|execs_done|execs_per_sec|saved_crashes|saved_hangs|corpus_count|bitmap_cvg|stability)' "$STATS"
# Replay the queue, then whatever AFL saved as crashes or hangs, outside the fuzzer.
echo "--- queue ---"
timeout 1200 dotnet "$PLAIN/Inference.Fuzz.dll" --target "$TARGET" --replay "$OUT/findings/default/queue" || true
for kind in crashes hangs; do
  if compgen -G "$OUT/findings/default/$kind/id*" > /dev/null; then
    echo "--- $kind ---"
    INFERENCE_FUZZ_VERBOSE=1 timeout 600 dotnet "$PLAIN/Inference.Fuzz.dll" --target "$TARGET" --replay "$OUT/findings/default/$kind" || true
  fi
done
