#!/bin/sh
#
# Managed by warden-provision: local edits are overwritten by the next apply.
# Rendered from agents/nova/.env (agent nova) and hosts.yml (host novavm).
#
# The process daemon(8) supervises for /usr/local/etc/rc.d/nova, run as nova
# (daemon(8); warden-provision docs/freebsd.md). It starts the agent in a tmux session named "nova" and
# stays in the foreground while that session lives, so daemon(8) restarts the agent when
# it dies; on SIGTERM (`service nova stop`) it stops the agent and ends the session.
#
# The agent's .env is read by the agent itself (Clawdie loads .env from its working
# directory). No shell ever reads it: not this script, not the rc.d script, so a value
# in it such as $(...) or `...` stays a string (sh(1) "Parameter Expansion").

set -u

session=nova
agent_dir=/home/nova/clawdie
agent_command='node dist/index.js'
stop_timeout=30

# daemon -u applies the user's login class to this process (daemon.c restrict_process:
# setusercontext LOGIN_SETALL), which can set LANG to the class default (login.conf(5) lang):
# pin the agent's locale here. A tmux server that is already running keeps its own
# environment, so the session gets the locale explicitly below.
LANG=en_US.UTF-8
LC_ALL=en_US.UTF-8
export LANG LC_ALL

cd "$agent_dir" || exit 1

# SIGTERM from daemon(8): SIGTERM to the agent's process group, wait up to $stop_timeout s
# (rc.subr(8) waits for daemon without a timeout: wait_for_pids), then KILL and end the session.
# (SC2329: called by the trap below, which shellcheck does not follow.)
# shellcheck disable=SC2329
stop_agent()
{
	trap - TERM INT
	pane_pid=$(tmux list-panes -s -t "=$session" -F '#{pane_pid}' 2>/dev/null | head -n 1)
	if [ -n "$pane_pid" ]; then
		kill -s TERM -- "-$pane_pid" 2>/dev/null
		waited=0
		while [ "$waited" -lt "$stop_timeout" ] && kill -s 0 -- "-$pane_pid" 2>/dev/null; do
			sleep 1
			waited=$((waited + 1))
		done
		kill -s KILL -- "-$pane_pid" 2>/dev/null
	fi
	tmux kill-session -t "=$session" 2>/dev/null
	exit 0
}
trap stop_agent TERM INT

# "=name" matches the session name exactly, not as a prefix. Given as separate words,
# tmux runs the command without the user's login shell: /bin/sh runs AGENT_COMMAND.
if ! tmux has-session -t "=$session" 2>/dev/null; then
	tmux new-session -d -s "$session" -c "$agent_dir" \
		env LANG="$LANG" LC_ALL="$LC_ALL" /bin/sh -c "$agent_command" || exit 1
fi

while tmux has-session -t "=$session" 2>/dev/null; do
	sleep 5 &
	wait "$!"
done
# The session ended on its own: exit non-zero, daemon(8) -r starts a fresh one.
exit 1
