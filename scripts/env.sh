# Sourced by the scripts: one persistent target directory outside the clone, so a
# fresh clone reuses compiled wasmtime and RocksDB instead of rebuilding them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}"
export CAIRN_ROOT
CAIRN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
