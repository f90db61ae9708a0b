#!/bin/sh
# Installed by warden-provision. Armed before a PF reload as
#   pf-rollback.sh SECONDS FILE...
# Unless killed (the reload was confirmed over a new SSH connection), it puts back the
# previous version of each FILE changed by this run and loads /etc/pf.conf again, so
# a bad ruleset cannot lock the operator out.
backup=/var/db/warden/backup
sleep "${1:-45}"
shift
for f in "$@"; do
	if [ -f "${backup}${f}" ]; then
		cp -p "${backup}${f}" "${f}"
	fi
done
pfctl -f /etc/pf.conf
date > /var/db/warden/pf-rollback.ran
