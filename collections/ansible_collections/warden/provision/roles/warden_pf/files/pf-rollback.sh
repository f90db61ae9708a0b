#!/bin/sh
# Installed by warden-provision. Armed before PF is loaded as
#   pf-rollback.sh reload|start SECONDS FILE...
# After SECONDS it takes $lock -- unless the play took it first, over a new SSH
# connection, to confirm the load -- keeps the new FILEs in $rejected, puts back their
# previous versions from $backup and either loads /etc/pf.conf again (reload) or turns
# PF off again (start: PF was off before this run), so a bad ruleset cannot lock the
# operator out.  mkdir(1) is atomic: exactly one of the two takes the lock.
set -u
state=/var/db/warden
backup=${WARDEN_PF_BACKUP:-$state/backup}
rejected=$state/rejected
lock=$state/pf-rollback.lock
mode=${1:-reload}
sleep "${2:-45}"
shift 2
mkdir "$lock" 2>/dev/null || exit 0
for f in "$@"; do
	mkdir -p "$rejected$(dirname "$f")"
	if [ -f "$f" ]; then
		cp -p "$f" "$rejected$f"
	fi
	if [ -f "$backup$f" ]; then
		cp -p "$backup$f" "$f"
	else
		rm -f "$f"
	fi
done
if [ "$mode" = start ]; then
	pfctl -d
else
	pfctl -f /etc/pf.conf
fi
date > "$state/pf-rollback.ran"
