#!/usr/bin/env bash
# Refreshes the vendored browser libraries from npm: the prebuilt dist files of the pinned
# versions below, copied as published. Bump a version here, run it, and update VERSIONS.md.
set -euo pipefail
cd "$(dirname "$0")"
HLS=1.7.4
TUS=4.3.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "hls.js@$HLS" "tus-js-client@$TUS" >/dev/null)
tar xzf "$work/hls.js-$HLS.tgz" -C "$work" package/dist/hls.min.mjs package/LICENSE
cp "$work/package/dist/hls.min.mjs" .
cp "$work/package/LICENSE" "$work/hls.LICENSE"
rm -rf "$work/package"
tar xzf "$work/tus-js-client-$TUS.tgz" -C "$work" package/dist/tus.min.js package/LICENSE
cp "$work/package/dist/tus.min.js" .
{ echo "# Licences of the vendored libraries"; echo
  echo "## hls.js $HLS (Apache-2.0)"; echo; echo '```'; cat "$work/hls.LICENSE"; echo '```'; echo
  echo "## tus-js-client $TUS (MIT)"; echo; echo '```'; cat "$work/package/LICENSE"; echo '```'
} > LICENSES.md
