#!/usr/bin/env bash
# The JavaScript libraries the page ships, from npm, pinned by package-lock.json.
#
#   bash static/vendor/update.sh           install the locked versions (npm ci, in a
#                                          temporary folder) and copy each library's
#                                          browser ESM build and licence here
#   bash static/vendor/update.sh --check   the same install, compared with the copies
#                                          committed here; exit 1 on any difference
#
# To change a version: edit package.json, run `npm install --package-lock-only` in a
# temporary copy of this folder, copy its package-lock.json back, run this script and
# commit the result. Needs Node.js and the npm registry; the board needs neither.
# node_modules never lands under static/ (static/ ships inside the Python wheel).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# One line a library: npm package | folder here | build folder in the package |
# files of the build (globs, relative to the build folder) | licence files (in the package).
LIBS=(
  "@msgpack/msgpack|msgpack|dist.esm|*.mjs utils/*.mjs|LICENSE"
  "marked|marked|lib|marked.esm.js|LICENSE"
  "dompurify|dompurify|dist|purify.es.mjs|LICENSE"
)
# What lives here besides the libraries' folders.
OWN=(package.json package-lock.json update.sh)

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v npm >/dev/null || { echo "update.sh: npm is not installed" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$work/"
# npm ci fails when package.json and package-lock.json disagree.
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)

out="$work/out"
mkdir -p "$out"
shopt -s nullglob
for entry in "${LIBS[@]}"; do
  IFS='|' read -r package folder build files licences <<<"$entry"
  source="$work/node_modules/$package"
  [[ -d "$source/$build" ]] || { echo "update.sh: $package has no $build/" >&2; exit 1; }
  mkdir -p "$out/$folder"
  read -ra patterns <<<"$files"   # read: no glob expansion in the current folder
  read -ra licence_files <<<"$licences"
  for pattern in "${patterns[@]}"; do
    matched=("$source/$build"/$pattern)
    [[ ${#matched[@]} -gt 0 ]] || { echo "update.sh: $package: nothing matches $build/$pattern" >&2; exit 1; }
    for file in "${matched[@]}"; do
      relative="${file#"$source/$build"/}"
      mkdir -p "$out/$folder/$(dirname "$relative")"
      cp "$file" "$out/$folder/$relative"
    done
  done
  for licence in "${licence_files[@]}"; do
    cp "$source/$licence" "$out/$folder/$licence"
  done
  version="$(cd "$work" && node -p "require('./node_modules/$package/package.json').version")"
  printf '%s@%s\n' "$package" "$version" >"$out/$folder/VERSION"
done

excludes=()
for name in "${OWN[@]}"; do excludes+=(-x "$name"); done
if [[ $check == 1 ]]; then
  if ! diff -r "${excludes[@]}" "$out" "$here"; then
    echo "update.sh --check: static/vendor differs from a fresh install of package-lock.json;" \
         "run bash static/vendor/update.sh and commit the result" >&2
    exit 1
  fi
  echo "static/vendor matches package-lock.json"
  exit 0
fi

# Replace every library folder (and drop folders of libraries no longer listed).
for existing in "$here"/*/; do
  rm -rf "$existing"
done
cp -R "$out"/. "$here"/
echo "static/vendor updated:"
cat "$here"/*/VERSION
