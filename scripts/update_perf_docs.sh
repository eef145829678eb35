#!/usr/bin/env bash
# Regenerate the tables of docs/performance.md from `tickinfer bench --markdown`: runs the
# bench (release build) with the arguments given, and replaces what lies between the
# `<!-- bench:begin -->` and `<!-- bench:end -->` markers with its output — the run's date
# (UTC), machine and configuration, then its tables. Nothing else in the file changes.
#
#   scripts/update_perf_docs.sh                        # the default run (~30 s after the build)
#   scripts/update_perf_docs.sh --requests 100000      # any `tickinfer bench` arguments
#   DOC=/tmp/perf.md scripts/update_perf_docs.sh --short   # another file (a dry run)
#
# Run it on a quiet machine: the numbers are whatever the cores gave while it ran (the block
# says the load average at the end of the run).
set -euo pipefail
cd "$(dirname "$0")/.."
doc="${DOC:-docs/performance.md}"
grep -q '^<!-- bench:begin -->$' "$doc" && grep -q '^<!-- bench:end -->$' "$doc" \
    || { echo "$doc: no <!-- bench:begin --> / <!-- bench:end --> lines" >&2; exit 1; }
out="$(mktemp)"
trap 'rm -f "$out" "$doc.new"' EXIT
cargo run --release --quiet -- bench --markdown "$@" >"$out"
grep -q '^| row | p50 ns' "$out" || { echo "tickinfer bench --markdown printed no table" >&2; exit 1; }
python3 - "$doc" "$out" <<'PY'
import sys
doc, out = sys.argv[1], sys.argv[2]
lines = open(doc, encoding="utf-8").read().split("\n")
begin, end = lines.index("<!-- bench:begin -->"), lines.index("<!-- bench:end -->")
if end < begin:
    sys.exit(f"{doc}: bench:end comes before bench:begin")
block = open(out, encoding="utf-8").read().strip("\n").split("\n")
new = lines[: begin + 1] + [""] + block + [""] + lines[end:]
open(doc + ".new", "w", encoding="utf-8").write("\n".join(new))
PY
mv "$doc.new" "$doc"
echo "$doc: bench block regenerated ($(wc -l <"$out") lines)" >&2
