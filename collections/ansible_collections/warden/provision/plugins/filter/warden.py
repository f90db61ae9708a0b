"""Ansible filters that hand the roles what `provision` already decided.

Roles never re-derive values (docs/design.md#architecture): these filters run on the controller, import
the same `provision` code that `invoke plan` uses, and return plain data — so the
apply writes exactly the lines the plan showed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError

# The filters are the warden-provision Python package seen from Ansible: without it in the
# Python that runs ansible-playbook they cannot work, but the collection must still load
# (ansible-doc, `ansible-test sanity --test import`), so each filter then says what to install.
PROVISION_MISSING: ImportError | None = None
try:
    from provision.hostfiles import EDITED, edited_results
    from provision.manifest import Manifest, read_record
    from provision.rcconf import read_vars
    from provision.remote import parse_frames, parse_live, read_script
except ImportError as exc:
    PROVISION_MISSING = exc


def _manifest(build_host_dir: str) -> Manifest:
    return Manifest.load(Path(build_host_dir))


def _previous(live: dict[str, Any]) -> Manifest | None:
    """The previous apply's record, held to what the renderer writes (manifest.check_record)."""
    try:
        return read_record(live.get("/var/db/warden/manifest.json"))
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


def warden_read_command(paths: list[str]) -> str:
    """The one-round read script `plan` uses, as a command line."""
    import shlex

    return "sh -c " + shlex.quote(read_script()) + " sh " + " ".join(shlex.quote(p) for p in paths)


def _raw(stdout: str) -> bytes:
    return stdout.encode("utf-8", "surrogateescape") + (b"" if stdout.endswith("\n") else b"\n")


PRE_IMAGE = "sha256:"  # warden_frames' key prefix for the hash of a file's bytes as read


def pre_image(data: bytes | None) -> str:
    """What warden_files expects to find before it writes: the bytes' sha256, or "absent"."""
    return "absent" if data is None else hashlib.sha256(data).hexdigest()


def warden_frames(stdout: str, requested: list[str] | None = None) -> dict[str, str | None]:
    """path -> live text, and PRE_IMAGE + path -> pre_image of the bytes read (the guard's start).

    REQUESTED: the paths the read was given (its command's arguments); a frame for any other
    path, a second frame for one, or output after the end is refused (remote.parse_live).
    """
    out = parse_frames(_raw(stdout), requested)
    texts: dict[str, str | None] = {k: (None if v is None else v.decode("utf-8", "replace")) for k, v in out.items()}
    texts.update({PRE_IMAGE + k: pre_image(v) for k, v in out.items()})
    return texts


def warden_read_problem(result: dict[str, Any], host: str = "the host") -> str:
    """Why the facts read (a registered command result) cannot be used, in one line; "" if it can.

    Shown instead of the result itself, which no_log hides: exit status and the last line
    of stderr, or what the parser refused — never the files' text.
    """
    rc = result.get("rc", 0)
    if rc != 0:
        err = str(result.get("stderr") or result.get("msg") or "no message").strip().splitlines()
        return (
            f"{host}: reading the live files failed (exit {rc}): {err[-1] if err else 'no message'} "
            "(fix: check that /bin/sh and the base system's tools work there, then run again)"
        )
    try:
        parse_frames(_raw(str(result.get("stdout", ""))), list(result.get("cmd", [])[4:]))
    except ValueError as exc:
        return (
            f"{host}: the live files' read cannot be used: {exc} (fix: a file root cannot read needs "
            "ansible_user root or ansible_become; a reply cut short or malformed, run again)"
        )
    return ""


def warden_facts_command(build_host_dir: str, paths: list[str]) -> str:
    """The facts round's one read: PATHS plus the markers host_actions reads, and the probe
    (provision/probe.py), as `invoke plan` reads them — but nothing below an agent's home:
    the apply needs none of it (the files module compares an agent's files as the agent),
    so no process of an agent's uid takes part (docs/security.md#the-facts-read)."""
    import shlex

    from provision.actions import marker_paths
    from provision.probe import probe_script

    m = _manifest(build_host_dir)
    every = list(dict.fromkeys([*paths, *marker_paths(m)]))
    script = read_script(probe=probe_script(m), agent_files=False)
    return "sh -c " + shlex.quote(script) + " sh " + " ".join(shlex.quote(p) for p in every)


def warden_probe(stdout: str) -> dict[str, Any]:
    """The probe's output in the facts read (its P frame) as live facts (provision/probe.py)."""
    from provision.probe import parse_probe

    probe = parse_live(_raw(stdout)).probe
    if probe is None:
        raise ValueError("the facts read has no probe output")
    found = parse_probe(probe)
    if not found.complete:
        raise ValueError("the probe's output ended early (was it cut off?)")
    return found.to_dict()


def warden_host_actions(
    build_host_dir: str,
    live: dict[str, Any],
    probe: dict[str, Any],
    agent: str = "",
    destroy_jails: bool = False,
    packages: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every action of this host (provision/actions.py), computed once in the facts round."""
    from provision.actions import host_actions
    from provision.probe import Probe

    actions = host_actions(
        _manifest(build_host_dir),
        Path(build_host_dir),
        live,
        Probe.from_dict(probe),
        agent=agent,
        destroy_jails=bool(destroy_jails),
        packages=list(packages or []),
    )
    return [a.to_dict() for a in actions]


def warden_owned_files(build_host_dir: str, agent: str = "", secret: bool | None = None) -> list[dict[str, Any]]:
    """Every file the manifest owns, with its rendered content (optionally one agent's only)."""
    m = _manifest(build_host_dir)
    out = []
    for e in m.files:
        if agent and e.agent not in (agent, None):
            continue
        if secret is not None and e.secret != secret:
            continue
        content = (Path(build_host_dir) / e.path.lstrip("/")).read_text(encoding="utf-8")
        out.append(
            {"path": e.path, "content": content, "mode": e.mode, "owner": e.owner, "group": e.group, "secret": e.secret}
        )
    return out


def warden_edited_files(
    build_host_dir: str, live: dict[str, Any], hold_pf_enable: bool = False
) -> list[dict[str, Any]]:
    """/etc/rc.conf, /etc/pf.conf, /etc/rctl.conf and /etc/sysctl.conf as `plan` computes them
    (sysrc semantics, hook, managed blocks); HOLD_PF_ENABLE leaves pf_enable as it is live.

    Each carries `expect`: the pre-images warden_files may find before writing (docs/design.md#edited-files).
    The text was computed from the file as the facts round read it, so that read is one; rc.conf
    is written up to three times in a run (warden_network holds pf_enable back, warden_pf or
    warden_agents adds it), so this run's own results, with and without the hold, are the
    others.  Any other content is an edit made since the read, which the write would revert.
    """
    m = _manifest(build_host_dir)
    previous = _previous(live)
    results = {hold: edited_results(m, live, previous, hold) for hold in (False, True)}
    out = []
    for path, content in results[hold_pf_enable].items():
        read = live.get(PRE_IMAGE + path)
        if read is None:  # no hash from the read (an older facts round): the text as read
            text = live.get(path)
            read = pre_image(None if text is None else text.encode("utf-8"))
        ours = [pre_image(r[path].encode("utf-8")) for r in results.values() if path in r]
        out.append(
            {
                "path": path,
                "content": content,
                "mode": EDITED[path],
                "owner": "root",
                "group": "wheel",
                "keep_mode": True,
                "expect": sorted({read, *ours}),
            }
        )
    return out


def warden_agent_dirs(build_host_dir: str, agent: str = "") -> list[dict[str, Any]]:
    """The agents' own directories (parents of files they own, and logs/), owned by them."""
    m = _manifest(build_host_dir)
    dirs: dict[str, dict[str, Any]] = {}
    for e in m.files:
        if e.owner == "root" or (agent and e.agent != agent):
            continue
        parent = str(Path(e.path).parent)
        for path in (parent, f"{parent}/logs"):
            dirs[path] = {"path": path, "owner": e.owner, "group": e.group, "mode": "0750"}
    return [dirs[k] for k in sorted(dirs)]


def warden_records(build_host_dir: str) -> list[dict[str, Any]]:
    """What the next plan and apply read to know what this apply put on the host."""
    m = _manifest(build_host_dir)
    return [
        {
            "path": "/var/db/warden/manifest.json",
            "content": m.to_json(),
            "mode": "0644",
            "owner": "root",
            "group": "wheel",
        }
    ]


def warden_removed_files(build_host_dir: str, live: dict[str, Any]) -> list[dict[str, str]]:
    """Files the previous apply put there that this one does not: {path, owner}.

    warden_files removes an agent's file as the agent (docs/security.md), root's as root.
    """
    m = _manifest(build_host_dir)
    previous = _previous(live)
    if previous is None:
        return []
    current = {e.path for e in m.files}
    return [
        {"path": e.path, "owner": e.owner}
        for e in sorted(previous.files, key=lambda e: e.path)
        if e.path not in current
    ]


SOUL_BUNDLES = "/var/db/warden-soul"  # roles/warden_soul copies each bundle here


def warden_soul_targets(souls: list[dict[str, Any]]) -> list[dict[str, str]]:
    """souls.json entries as warden_soul takes them: the bundle's path on the host."""
    return [
        {
            "name": s["name"],
            "user": s["user"],
            "group": s["group"],
            "dir": s["dir"],
            "bundle": f"{SOUL_BUNDLES}/{s['name']}.bundle",
            "commit": s["commit"],
        }
        for s in souls
    ]


def warden_previous(live: dict[str, Any]) -> dict[str, Any]:
    """The previous apply's record as data ({} when there is none), once it passed
    manifest.check_record: roles never read the live record's JSON themselves."""
    previous = _previous(live)
    if previous is None:
        return {}
    data: dict[str, Any] = json.loads(previous.to_json())
    return data


def warden_removed_agents(build_host_dir: str, live: dict[str, Any]) -> list[str]:
    previous = _previous(live)
    return sorted(set(previous.agents) - set(_manifest(build_host_dir).agents)) if previous else []


def warden_manifest(build_host_dir: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(build_host_dir) / ".warden/manifest.json").read_text(encoding="utf-8"))
    return data


def warden_rc_vars(text: str | None) -> dict[str, str]:
    return read_vars(text or "")


def _fleet(inventory: str, agents_dir: str) -> Any:
    from provision.inventory import load_inventory
    from provision.registry import load_fleet

    hosts, _ = load_inventory(Path(inventory))
    return load_fleet(Path(agents_dir), hosts)


def warden_doctor_script(host_name: str, inventory: str, agents_dir: str) -> str:
    from provision.doctor import probe_script

    fleet = _fleet(inventory, agents_dir)
    return probe_script(fleet.host(host_name))


def warden_doctor_failures(stdout: str, host_name: str, inventory: str, agents_dir: str) -> list[str]:
    """`invoke doctor`'s verdicts for this host, minus what the apply itself sets up."""
    from provision.doctor import preflight_failures

    fleet = _fleet(inventory, agents_dir)
    host = fleet.host(host_name)
    return preflight_failures(host, fleet.agents_on(host_name), stdout) if host else []


def _needs_provision(name: str) -> Callable[..., Any]:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise AnsibleFilterError(
            f"the filter warden.provision.{name} needs the warden-provision Python package, which the Python "
            f"running ansible-playbook ({sys.executable}) cannot import ({PROVISION_MISSING}); fix: install it "
            "into that Python, `pip install warden-provision` (or the wheel built from its repository, "
            "README.md#use-it-from-your-own-ansible-repository)"
        )

    return missing


class FilterModule:
    def filters(self) -> dict[str, Any]:
        found = self._filters()
        if PROVISION_MISSING is None:
            return found
        return {name: _needs_provision(name) for name in found}

    def _filters(self) -> dict[str, Any]:
        return {
            "warden_read_command": warden_read_command,
            "warden_frames": warden_frames,
            "warden_owned_files": warden_owned_files,
            "warden_edited_files": warden_edited_files,
            "warden_records": warden_records,
            "warden_agent_dirs": warden_agent_dirs,
            "warden_removed_files": warden_removed_files,
            "warden_removed_agents": warden_removed_agents,
            "warden_previous": warden_previous,
            "warden_read_problem": warden_read_problem,
            "warden_soul_targets": warden_soul_targets,
            "warden_probe": warden_probe,
            "warden_facts_command": warden_facts_command,
            "warden_host_actions": warden_host_actions,
            "warden_manifest": warden_manifest,
            "warden_rc_vars": warden_rc_vars,
            "warden_doctor_script": warden_doctor_script,
            "warden_doctor_failures": warden_doctor_failures,
        }
