#!/usr/bin/env bash
# Vendors the chat page's front-end libraries from npm into static/vendor/, with their licence
# files, and writes VERSIONS. No CDN and no bundler: the page loads these files as they are.
# Run from anywhere; change a version below and run it again to upgrade.
set -euo pipefail
cd "$(dirname "$0")"

# package@version | file in the package → name here
PACKAGES=(
  "markdown-it@14.1.1|dist/markdown-it.min.js|markdown-it.min.js"
  "dompurify@3.5.0|dist/purify.es.mjs|purify.es.mjs"
  "@highlightjs/cdn-assets@11.11.1|es/highlight.min.js|highlight.min.js"
  "@highlightjs/cdn-assets@11.11.1|styles/github.min.css|highlight-light.min.css"
  "@highlightjs/cdn-assets@11.11.1|styles/github-dark.min.css|highlight-dark.min.css"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > VERSIONS
for entry in "${PACKAGES[@]}"; do
  IFS="|" read -r spec source target <<< "$entry"
  name=${spec%@*}
  folder="$work/$(echo "$spec" | tr '/@' '__')"
  if [ ! -d "$folder" ]; then
    mkdir -p "$folder"
    (cd "$folder" && npm pack "$spec" --silent > /dev/null && tar xzf ./*.tgz)
    licence=$(ls "$folder/package" | grep -i -m1 '^licen[cs]e')
    cp "$folder/package/$licence" "LICENSE.$(basename "$name")"
    echo "$spec" >> VERSIONS
  fi
  cp "$folder/package/$source" "$target"
done
echo "vendored: $(tr '\n' ' ' < VERSIONS)"
