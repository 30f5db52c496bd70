#!/usr/bin/env bash
# build-standins.sh: make the images the container tests need, as no registry is reachable here.
#
#   debian:bookworm-slim  a Debian base from Debian's packages (mmdebstrap | docker import)
#   postgres:15, redis:7  stand-ins honouring the official images' interface (standins/)
#
# Images that already exist are kept (a cache between runs); a reachable registry is used when
# there is one, so the real images win wherever they can be pulled.
set -Eeuo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE

have() { docker image inspect "$1" >/dev/null 2>&1; }
log() { printf '==> %s\n' "$*" >&2; }

ensure_base() {
  have debian:bookworm-slim && return 0
  if docker pull -q debian:bookworm-slim >/dev/null 2>&1; then return 0; fi
  log "building debian:bookworm-slim from Debian's packages (mmdebstrap)"
  local -a hooks=()
  if [[ -d /usr/local/share/ca-certificates ]]; then
    # The host's extra certificates (HTTPS goes through an intercepting proxy on some machines).
    # shellcheck disable=SC2016 # "$1" is mmdebstrap's, expanded by its hook shell
    hooks+=(--customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share/'
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1')
  fi
  local sources=/etc/apt/sources.list.d/debian.sources
  [[ -f "${sources}" ]] || sources=/etc/apt/sources.list
  mmdebstrap --variant=minbase --quiet --include=ca-certificates "${hooks[@]}" \
    bookworm - "${sources}" | docker import -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
}

ensure_standin() {
  local image="$1" folder="$2"
  have "${image}" && return 0
  if docker pull -q "${image}" >/dev/null 2>&1; then return 0; fi
  log "building the ${image} stand-in"
  docker build -q -t "${image}" "${HERE}/standins/${folder}" >/dev/null
}

ensure_base
ensure_standin postgres:15 postgres
ensure_standin redis:7 redis
