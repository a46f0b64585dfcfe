#!/usr/bin/env bash
# Assembles every PTX kernel of the project with NVIDIA's ptxas for sm_80 and sm_90 and prints the
# registers / shared memory / spill report of each entry point. No GPU is needed.
#
# Usage: scripts/check-ptx.sh [--no-build]
#   - hand-written modules: Inference.Cuda/Ptx/*.ptx, each assembled for sm_80 and sm_90;
#   - ILGPU-generated modules: written by `Inference.Benchmarks dump-ptx` (one file per kernel and target).
# Exit status: non-zero when ptxas reports an error or any entry point spills (spill stores/loads > 0).
# ptxas comes from scripts/fetch-ptxas.sh (cached under .tools/, git-ignored); set PTXAS to use another one.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo_root"
ptxas="${PTXAS:-$(scripts/fetch-ptxas.sh | tail -n 1)}"
out="$repo_root/.tools/ptx-check"
rm -rf "$out"
mkdir -p "$out/ilgpu"

if [[ "${1:-}" != "--no-build" ]]; then
  dotnet build Inference.Benchmarks -c Debug -v quiet -nologo >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
fi
dotnet Inference.Benchmarks/bin/Debug/net10.0/Inference.Benchmarks.dll dump-ptx "$out/ilgpu" >/dev/null

failures=0
printf '%-44s %-6s %-40s %5s %7s %6s %6s\n' module arch entry regs smem spillS spillL

# check FILE ARCH: assembles one module and prints one line per entry point.
check() {
  local file="$1" arch="$2" log
  log="$out/$(basename "$file").$arch.log"
  if ! "$ptxas" -arch="$arch" -v -o /dev/null "$file" >"$log" 2>&1; then
    echo "ERROR: ptxas failed on $file for $arch:" >&2
    cat "$log" >&2
    failures=$((failures + 1))
    return
  fi
  # ptxas -v prints, per entry: "Compiling entry function 'NAME' for 'sm_XX'",
  # "N bytes stack frame, S bytes spill stores, L bytes spill loads", "Used R registers, M bytes smem, ...".
  awk -v module="$(basename "$file")" -v arch="$arch" '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); entry = substr($0, RSTART + 1, RLENGTH - 2); smem = 0 }
    /bytes spill stores/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) == "stores,") ss = $i; if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) == "loads") sl = $i } }
    /Used [0-9]+ registers/ {
      for (i = 1; i <= NF; i++) { if ($i == "Used") regs = $(i+1); if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem = $i }
      printf "%-44s %-6s %-40s %5s %7s %6s %6s\n", module, arch, entry, regs, smem, ss, sl
      if (ss + 0 > 0 || sl + 0 > 0) spilled = 1
    }
    END { exit spilled }' "$log" || { echo "ERROR: $file spills registers on $arch" >&2; failures=$((failures + 1)); }
}

for arch in sm_80 sm_90; do
  for f in Inference.Cuda/Ptx/*.ptx; do
    [[ -e "$f" ]] && check "$f" "$arch"
  done
  for f in "$out"/ilgpu/*."${arch/_/_}".ptx; do
    check "$f" "$arch"
  done
done

if (( failures > 0 )); then
  echo "check-ptx: $failures failure(s)" >&2
  exit 1
fi
echo "check-ptx: all modules assembled for sm_80 and sm_90 without spills ($("$ptxas" --version | tail -n 1))"
