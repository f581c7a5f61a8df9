#!/usr/bin/env bash
# Deploys the bundled example app on Slipway's embedded default (SQLite and
# an in-process queue), then prints where it is served.
# Usage: examples/hello/deploy.sh [ENV]   (ENV defaults to test)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
env=${1:-test}
repo="$root/.slipway/example-hello"

busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  [ -x /bin/busybox ] && busybox=/bin/busybox
fi
if [ -z "$busybox" ]; then
  echo "deploy.sh: a static busybox is needed (Debian: apt-get install busybox-static)" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "deploy.sh: no Docker engine answers; start one (as root: scripts/services)" >&2
  exit 1
fi

# The example as a Git repository of its own (a new commit when it changed).
mkdir -p "$repo"
cp -r "$here/Dockerfile" "$here/slipway.toml" "$here/.dockerignore" "$here/www" "$repo/"
cp "$busybox" "$repo/busybox"
git -C "$repo" init -q -b main 2>/dev/null || git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=slipway -c user.email=slipway@localhost commit -q -m "example app" 2>/dev/null || true

slipway() { cargo run -q -p slipway -- "$@"; }
slipway project show hello >/dev/null 2>&1 || slipway project create hello --repo "$repo"
slipway env set hello "$env" GREETING=world >/dev/null
slipway deploy hello "$env" --migrate
