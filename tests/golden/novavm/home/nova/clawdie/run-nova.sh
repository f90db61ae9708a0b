#!/bin/sh
#
# Managed by warden-provision: agent nova from nova/.env. Local changes are overwritten.
#
# Started by daemon(8) from /usr/local/etc/rc.d/nova as user nova.
# Runs the agent in a tmux session named "nova" and stays in the foreground while
# the session lives, so daemon(8) restarts the agent when it dies; on SIGTERM it ends
# the session and exits, which is how `service nova stop` stops the agent.
# The agent reads its own .env; this script never sources it.

set -u

session="nova"
agent_command='node dist/index.js'

cd "/home/nova/clawdie" || exit 1
mkdir -p logs

# daemon(8) forwards SIGTERM here (FREEBSD.md §1.6): end the session, then exit.
trap 'tmux kill-session -t "$session" 2>/dev/null; exit 0' TERM INT HUP

if ! tmux has-session -t "$session" 2>/dev/null; then
	tmux new-session -d -s "$session" -c "/home/nova/clawdie" "$agent_command" || exit 1
fi

while tmux has-session -t "$session" 2>/dev/null; do
	sleep 5 &
	wait $!
done
exit 1
