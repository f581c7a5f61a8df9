# What deploying the example needs besides Rust: a Docker engine and a
# static busybox (the test and example images are FROM scratch with it).
# Sourced by scripts/services, scripts/engine and examples/hello/deploy.sh,
# so the first command on a bare machine sets them up exactly as the tests'
# machines are set up. Defines functions only; sets nothing on its own.

# say MESSAGE: one line on stderr, prefixed with the script's name.
say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# wait_for SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, or says
# WHAT did not come up and fails.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then say "$what did not come up within ${secs}s"; return 1; fi
    sleep 0.5
  done
}

# is_debian: apt-get and dpkg are there to install with.
is_debian() { [ -f /etc/debian_version ] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; }

# engine_packages: the Debian packages of the engine and busybox not installed yet.
engine_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  echo "${missing[*]}"
}

# static_busybox: prints the path of a statically linked busybox, or fails.
static_busybox() {
  local candidate
  for candidate in "$(command -v busybox || true)" /bin/busybox /usr/bin/busybox; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    # Without `file`, busybox-static's own binary is known to be static.
    if command -v file >/dev/null; then
      file -L "$candidate" 2>/dev/null | grep -q 'statically linked' && { echo "$candidate"; return 0; }
    elif dpkg -S "$candidate" 2>/dev/null | grep -q '^busybox-static:'; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

# start_docker: starts dockerd unless an engine answers, and waits for it.
# The daemon gets `3>&-`: scripts/services' caller reads its fd 3, and a
# daemon holding it open would hang that caller.
start_docker() {
  docker info >/dev/null 2>&1 && return 0
  say "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/slipway-dockerd.log 2>&1 3>&- </dev/null &
  wait_for 60 "Docker engine" docker info
}

# engine_setup: as root on Debian, installs what is missing and starts Docker.
engine_setup() {
  local packages
  packages=$(engine_packages)
  if [ -n "$packages" ]; then
    say "installing $packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -qq $packages >/dev/null
  fi
  start_docker
}
