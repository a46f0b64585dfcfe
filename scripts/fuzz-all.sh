#!/usr/bin/env bash
# Runs every fuzz target of scripts/fuzz-target.sh in turn for at most MAX_SECONDS each.
# Usage: scripts/fuzz-all.sh [MAX_SECONDS] [EXECUTIONS]   (defaults: 600 s, 5000000 executions per target)
set -euo pipefail
for target in template tokenizer vocab request constraint gguf; do
  echo "=== $target ==="
  "$(dirname "$0")/fuzz-target.sh" "$target" "${2:-5000000}" "${1:-600}"
done
