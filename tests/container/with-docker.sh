#!/usr/bin/env bash
# with-docker.sh COMMAND...: run COMMAND with a Docker engine available.
#
# When `docker info` already works, COMMAND just runs. Otherwise, as root, this installs Debian's
# docker.io, docker-compose and mmdebstrap when missing, clears pid files left by an unclean
# stop, starts dockerd, runs COMMAND and stops the dockerd it started. Not root and no engine:
# COMMAND runs anyway, and the container tests skip with a reason.
set -Eeuo pipefail

readonly DOCKERD_LOG="${TMPDIR:-/tmp}/gym-backup-dockerd.log"
started_pid=""

log() { printf '==> %s\n' "$*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

install_docker() {
  local -a missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  ((${#missing[@]} == 0)) && return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# A pid file whose process is gone (or not a docker daemon) is left by an unclean stop.
clear_stale_pid() {
  local file="$1" name="$2" pid
  [[ -f "${file}" ]] || return 0
  pid="$(<"${file}")"
  if [[ -n "${pid}" && -r "/proc/${pid}/comm" ]] && [[ "$(<"/proc/${pid}/comm")" == "${name}" ]] &&
    ! grep -q '^State:.*Z' "/proc/${pid}/status" 2>/dev/null; then
    return 0
  fi
  log "removing stale ${file}"
  rm -f -- "${file}"
}

start_engine() {
  clear_stale_pid /var/run/docker.pid dockerd
  clear_stale_pid /var/run/docker/containerd/containerd.pid containerd
  log "starting dockerd (log: ${DOCKERD_LOG})"
  dockerd >"${DOCKERD_LOG}" 2>&1 &
  started_pid=$!
  local i
  for ((i = 0; i < 60; i++)); do
    engine_up && return 0
    kill -0 "${started_pid}" 2>/dev/null || break
    sleep 0.5
  done
  log "dockerd did not start; its log:"
  tail -n 20 "${DOCKERD_LOG}" >&2
  return 1
}

stop_engine() {
  [[ -n "${started_pid}" ]] || return 0
  log "stopping the dockerd this run started (pid ${started_pid})"
  kill "${started_pid}" 2>/dev/null || true
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "${started_pid}" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -9 "${started_pid}" 2>/dev/null || true
}

main() {
  if ! engine_up; then
    if [[ "$(id -u)" -eq 0 ]]; then
      install_docker
      trap stop_engine EXIT
      start_engine
    else
      log "no Docker engine and not root: the container tests will skip"
    fi
  fi
  "$@"
}

main "$@"
