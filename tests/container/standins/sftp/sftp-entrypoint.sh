#!/usr/bin/env bash
# sftp-entrypoint.sh: the SFTP stand-in's start: a host key when none is mounted, then sshd in
# the foreground, logging to stderr.
set -Eeuo pipefail

readonly HOST_KEY=/etc/ssh/host_key/ssh_host_ed25519_key

if [[ ! -f "${HOST_KEY}" ]]; then
  ssh-keygen -q -t ed25519 -N '' -C sftp-standin -f "${HOST_KEY}"
fi
if [[ ! -s /etc/ssh/authorized_keys/gymbackup ]]; then
  printf 'sftp-entrypoint.sh: mount the client public key at /etc/ssh/authorized_keys/gymbackup\n' >&2
  exit 1
fi
/usr/sbin/sshd -t
exec /usr/sbin/sshd -D -e
