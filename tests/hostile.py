"""Hostile values and a way to run rendered shell outputs as FreeBSD would (test helpers).

Used by tests/test_escape.py (the filters alone) and tests/test_models.py (what check
lets through). FreeBSD's rc.subr, daemon(8) and tmux are not here: rc.subr is a stub
that runs the `rcvar`, `status` and `start` verbs the way rc.subr uses the script's
variables (start_precmd called, command_args evaluated once more), and tmux only
records its argv.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DASH = shutil.which("dash") or "/bin/sh"

# Values that are code in sh, or end a line or a quote in some format; {c} is the canary.
HOSTILE = (
    "$(touch {c})",
    "`touch {c}`",
    "x; touch {c}",
    'x"; touch {c}; "',
    "x'; touch {c}; '",
    "x\\",
    "x\ntouch {c}",
    "x\r\ntouch {c}\n",
    "${{IFS}}touch${{IFS}}{c}",
    "x #\n touch {c}",
    "Živa Šuštar 日本 \u2028touch {c}",
    "A" * 200_000,
)


SHELL_OUTPUTS = ("/usr/local/etc/rc.d/", "/usr/local/etc/warden/jails/")
RC_SUBR_STUB = r"""
load_rc_config() { :; }
install() { printf 'install %s\n' "$*"; }
run_rc_command() {
	case "$1" in
	rcvar) eval "printf '%s\n' \"\${$rcvar:-}\"" ;;
	status) printf 'status %s %s\n' "$pidfile" "$desc" ;;
	start) eval "$start_precmd"; eval "set -- $command $command_args"; printf '%s\n' "$@" ;;
	esac
}
"""
TMUX_RECORDER = '#!/bin/sh\nprintf \'%s\\n\' "$@" >> "$TMUX_LOG"\nexit 1\n'


def run_outputs(files: list[tuple[str, str]], work: Path) -> tuple[str, str]:
    """Write FILES (host path, text) under WORK and run each shell output as FreeBSD would."""
    driver = []
    (work / "rc.subr").write_text(RC_SUBR_STUB)
    bindir = work / "bin"
    bindir.mkdir()
    (bindir / "tmux").write_text(TMUX_RECORDER)
    (bindir / "tmux").chmod(0o755)
    for n, (path, text) in enumerate(files):
        out = work / f"f{n}"
        if path.startswith("/usr/local/etc/rc.d/"):
            out.write_text(text.replace(". /etc/rc.subr", f". {work / 'rc.subr'}"))
            driver += [f"for verb in rcvar status start; do {DASH} {out} $verb; done"]
        elif path.endswith(".sh"):
            # The agent's directory does not exist here: `cd` is a no-op so the rest runs.
            out.write_text(text.replace("set -u\n", "set -u\ncd() { :; }\n", 1))
            driver += [f"{DASH} {out}"]
        elif path.startswith("/usr/local/etc/warden/jails/"):
            out.write_text(text)
            driver += [f"( . {out} )"]
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "TMUX_LOG": str(work / "tmux.log")}
    # Bytes, decoded without newline translation: a value's "\r" must arrive as it is.
    done = subprocess.run([DASH, "-c", "\n".join(driver)], cwd=work, env=env, capture_output=True, timeout=120)
    return done.stdout.decode(), done.stderr.decode()
