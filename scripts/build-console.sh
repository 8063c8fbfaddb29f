#!/usr/bin/env bash
# Rebuilds the console's embedded assets (src/console/assets/) from their sources in
# src/console/web/: protobuf-es code generated from proto/ by buf, the page bundled by esbuild
# into one ES module. Reproducible: exact versions from package-lock.json (`npm ci`), no
# timestamps or absolute paths in the output. The built assets are committed, so running the
# server never needs Node.js; CI runs this script and fails if the committed assets differ
# (`scripts/build-console.sh --check`).
#
# Needs node and npm (the machine's Node.js 20 works).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WEB=src/console/web
OUT=src/console/assets

(cd "$WEB" && npm ci --silent --no-audit --no-fund >/dev/null)
(cd "$WEB" && node_modules/.bin/buf generate && node_modules/.bin/tsc -p .)
"$WEB/node_modules/.bin/esbuild" "$WEB/src/app.ts" \
    --bundle --format=esm --target=es2022 --minify --legal-comments=none \
    --charset=utf8 --log-level=warning --outfile="$OUT/app.js"
# index.html, app.css and favicon.svg are written by hand in $OUT and served as they are.

if [[ "${1:-}" == "--check" ]]; then
    if ! git diff --exit-code --stat -- "$OUT"; then
        echo "build-console: the committed console assets differ from their sources;" >&2
        echo "run scripts/build-console.sh and commit $OUT" >&2
        exit 1
    fi
    untracked=$(git ls-files --others --exclude-standard -- "$OUT")
    if [[ -n "$untracked" ]]; then
        echo "build-console: untracked files in $OUT: $untracked" >&2
        exit 1
    fi
    echo "console assets match their sources"
fi
