#!/usr/bin/env bash
# Rewrites the key tables of docs/pipeline.md's engine tables ([run], [train], [sample], [eval])
# from the specs in the code (`pathline inspect TABLE --markdown`). Each table sits between the
# lines `<!-- keys of [TABLE]: generated ... -->` and `<!-- end of keys -->`; the test
# Docs.EngineTableKeysMatchTheSpecs fails when they differ.
#   bash tools/gen-docs.sh [build folder, default ./build]
set -euo pipefail
cd "$(dirname "$0")/.."
pathline="${1:-build}/bin/pathline"
[[ -x $pathline ]] || { echo "tools/gen-docs.sh: no $pathline; build first" >&2; exit 2; }
doc=docs/pipeline.md
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
cp "$doc" "$tmp"
for table in run train sample eval; do
  generated="$("$pathline" inspect "$table" --markdown)"
  TABLE="$table" GENERATED="$generated" python3 - "$tmp" <<'PY'
import os, re, sys
path = sys.argv[1]
text = open(path).read()
table = os.environ["TABLE"]
begin = f"<!-- keys of [{table}]: generated from the specs by tools/gen-docs.sh -->\n"
end = "<!-- end of keys -->\n"
start = text.index(begin) + len(begin)
stop = text.index(end, start)
text = text[:start] + os.environ["GENERATED"].rstrip("\n") + "\n" + text[stop:]
open(path, "w").write(text)
PY
done
mv "$tmp" "$doc"
trap - EXIT
echo "tools/gen-docs.sh: $doc key tables written"
