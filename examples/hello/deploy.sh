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

. "$root/scripts/lib/engine.sh"

# What this needs. As root on Debian, Docker and the static busybox are
# installed and started (scripts/lib/engine.sh, as scripts/services does);
# elsewhere each missing piece is named with the command that provides it.
needs=()
command -v cargo >/dev/null ||
  needs+=("Rust (no cargo on PATH): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh")
command -v git >/dev/null ||
  needs+=("git: $(is_debian && echo 'sudo apt-get install git' || echo "your system's git package")")
if ! docker info >/dev/null 2>&1 || ! static_busybox >/dev/null; then
  if [ "$(id -u)" = 0 ] && is_debian; then
    engine_setup
  else
    engine="" box=""
    if ! command -v docker >/dev/null; then
      engine="a Docker engine (no docker on PATH)"
    elif ! said=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
      said=$(printf '%s' "$said" | tail -n 1)
      engine="a Docker engine that answers (docker: ${said%%: Get *})"
    fi
    static_busybox >/dev/null || box="a static busybox"
    if [[ $engine == *"permission denied"* ]]; then
      needs+=("access to the Docker engine (${engine#*(}: sudo usermod -aG docker $(id -un), then log in again")
      engine=""
    fi
    if is_debian && [ -n "$engine$box" ]; then
      needs+=("$engine${engine:+${box:+ and }}$box: sudo $root/scripts/engine (installs docker.io and busybox-static, starts dockerd)")
    else
      [ -z "$engine" ] || needs+=("$engine: install Docker Engine, https://docs.docker.com/engine/install/")
      [ -z "$box" ] || needs+=("$box: your system's busybox-static package")
    fi
  fi
fi
if [ ${#needs[@]} -gt 0 ]; then
  say "cannot deploy the example yet; missing:"
  for need in "${needs[@]}"; do printf '  - %s\n' "$need" >&2; done
  exit 1
fi
busybox=$(static_busybox) || { say "no static busybox found after setting up busybox-static"; exit 1; }

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
