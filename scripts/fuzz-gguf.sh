#!/usr/bin/env bash
# Fuzzes the GGUF header parser (GgufFile) with AFL++ and SharpFuzz: scripts/fuzz-target.sh gguf.
# Usage: scripts/fuzz-gguf.sh [EXECUTIONS] [MAX_SECONDS]   (see scripts/fuzz-target.sh)
exec "$(dirname "$0")/fuzz-target.sh" gguf "$@"
