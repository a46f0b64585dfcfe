#!/usr/bin/env bash
# Fetches NVIDIA's ptxas (PTX assembler) without installing the CUDA toolkit.
#
# Usage: scripts/fetch-ptxas.sh [DIR]      (DIR defaults to .tools/ptxas, git-ignored)
# Prints the path of the ptxas binary on its last line.
#
# NOTE: Debian's non-free nvidia-cuda-toolkit (11.8 on bookworm) carries usr/bin/ptxas, a static-ish
# binary that links only libc/libm/libpthread. We download the .deb with apt's own client using a
# private source list (non-free component only) and state folder, and unpack it with dpkg -x; nothing
# is installed system-wide. ptxas 11.8 accepts PTX ISA up to 7.8 and targets up to sm_90.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$repo_root/.tools/ptxas}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
ptxas="$dir/root/usr/bin/ptxas"

if [[ -x "$ptxas" ]]; then
  echo "$ptxas"
  exit 0
fi

sources=/etc/apt/sources.list.d/debian.sources
[[ -f "$sources" ]] || { echo "error: $sources not found (a Debian system is needed)" >&2; exit 1; }

work="$dir/apt"
mkdir -p "$work/lists/partial" "$work/archives/partial"
# First stanza of the Debian sources (the main archive), switched to the non-free component.
sed 's/^Components:.*/Components: non-free/' "$sources" | awk 'BEGIN{RS="";ORS="\n\n"} NR==1' > "$work/nf.sources"

apt_opts=(
  -o "Dir::Etc::SourceList=$work/nf.sources"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache::Archives=$work/archives"
  -o "Debug::NoLocking=1"
)
apt-get "${apt_opts[@]}" update >&2
(cd "$work" && apt-get "${apt_opts[@]}" download nvidia-cuda-toolkit >&2)

deb="$(ls "$work"/nvidia-cuda-toolkit_*.deb | head -n 1)"
mkdir -p "$dir/root"
dpkg -x "$deb" "$dir/root"
rm -f "$deb"
[[ -x "$ptxas" ]] || { echo "error: ptxas not found in $deb" >&2; exit 1; }
"$ptxas" --version >&2
echo "$ptxas"
