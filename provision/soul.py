"""Soul repos: fetched at a ref, validated, pinned to a commit, bundled for the hosts (README.md#soul-repos).

Git is the real `git` CLI.  A soul repo is checked before it goes anywhere: the core
files, the manifest against its schema, and no secrets, chat logs, lock files or runtime
state.  Problems name the file in the repo, the line and the rule — never the secret.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .masking import mask_url_credentials, url_credentials
from .models import is_secret_key
from .problems import Location, Problem
from .soul_manifest import SCHEMA_ID, SoulManifest

CORE_FILES = ("manifest.json", "SOUL.md", "USER.md", "IDENTITY.md")
OPTIONAL = ("AGENTS.md", "skills/", "memories/curated/", "adapters/")
# Raw conversations belong to the runtime, not to the portable soul.
CHAT_LOGS = ("*.jsonl", "chat*.log", "conversations/*", "transcripts/*", "*.chat.json", "memories/raw/*")
LOCK_FILES = ("*.lock", "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Cargo.lock", ".~lock*")
RUNTIME_STATE = (
    "*.pid",
    "*.sock",
    "*.sqlite",
    "*.sqlite3",
    "*.db",
    "*.db-wal",
    "*.db-shm",
    ".env",
    ".env.*",
    "state/*",
    "logs/*",
    "*.log",
    "node_modules/*",
    "tmp/*",
    "cache/*",
)
MIN_SECRET_LEN = 8


class SoulError(Exception):
    """Fetching failed; the message names the repo, the ref and the fix."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    commit: str


def _git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={
            "GIT_TERMINAL_PROMPT": "0",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(Path.home()),
            "GIT_CONFIG_NOSYSTEM": "1",
        },
    )
    if result.returncode != 0:
        raise SoulError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "git failed")
    return result.stdout.strip()


def fetch(repo: str, ref: str | None, cache_dir: Path) -> Fetched:
    """Mirror REPO into the cache and export the tree of REF (default HEAD) at its commit."""
    from filelock import FileLock

    key = hashlib.sha256(repo.encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    mirror = cache_dir / f"{key}.git"
    with FileLock(str(cache_dir / f"{key}.lock"), timeout=300):
        try:
            if mirror.exists():
                _git("--git-dir", str(mirror), "fetch", "--prune", "--quiet", "origin")
            else:
                _git("clone", "--mirror", "--quiet", repo, str(mirror))
        except SoulError as exc:
            raise SoulError(
                f"{mask_url_credentials(repo)}: cannot fetch ({mask_url_credentials(str(exc))}) "
                "(fix: check SOUL_REPO; the repo must be reachable from this machine)"
            ) from None
        try:
            commit = _git("--git-dir", str(mirror), "rev-parse", "--verify", f"{ref or 'HEAD'}^{{commit}}")
        except SoulError:
            raise SoulError(
                f"{mask_url_credentials(repo)}: ref {ref!r} not found "
                "(fix: set SOUL_REF to a branch, tag or commit that exists)"
            ) from None
        tree = cache_dir / f"{key}-{commit}"
        if not tree.exists():
            tmp = cache_dir / f".{key}-{commit}.tmp"
            subprocess.run(["rm", "-rf", str(tmp)], check=True)
            tmp.mkdir()
            archive = subprocess.run(
                ["git", "--git-dir", str(mirror), "archive", commit], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
            tmp.rename(tree)
        return Fetched(tree, commit)


def pin(repo: str, ref: str | None, cache_dir: Path) -> str:
    """The full commit hash REF resolves to now (written into SOUL_REF by soul-pin)."""
    return fetch(repo, ref, cache_dir).commit


def _matches(rel: str, patterns: tuple[str, ...]) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        if (
            fnmatch.fnmatch(rel, pat)
            or fnmatch.fnmatch(name, pat)
            or any(fnmatch.fnmatch("/".join(rel.split("/")[i:]), pat) for i in range(1, rel.count("/") + 1))
        ):
            return pat
    return None


def validate(checkout: Path, agent_name: str, secret_values: Mapping[str, str], source: Path) -> list[Problem]:
    """Every rule of README.md#soul-repos against the files of CHECKOUT; [] when the soul may go to a host."""
    problems: list[Problem] = []

    def bad(rel: str, line: int | None, rule: str, message: str, fix: str) -> None:
        problems.append(Problem((Location(Path(rel), line),), f"soul of {agent_name}: {message}", fix, rule=rule))

    files = sorted(str(p.relative_to(checkout)) for p in checkout.rglob("*") if p.is_file() and ".git" not in p.parts)
    for core in CORE_FILES:
        if core not in files:
            bad(core, None, "soul-core-file", f"{core} is missing", f"add {core} (core files: {', '.join(CORE_FILES)})")
    if "manifest.json" in files:
        try:
            data = json.loads((checkout / "manifest.json").read_text(encoding="utf-8"))
            manifest = SoulManifest.model_validate(data)
            if manifest.agent_id != agent_name:
                bad(
                    "manifest.json",
                    None,
                    "soul-agent-id",
                    f"agent_id is {manifest.agent_id!r}, not {agent_name!r}",
                    f'set "agent_id": "{agent_name}" or point SOUL_REPO at {agent_name}\'s soul',
                )
        except json.JSONDecodeError as exc:
            bad("manifest.json", exc.lineno, "soul-manifest", f"not JSON: {exc.msg}", "fix the JSON syntax")
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(top)"
                bad(
                    "manifest.json",
                    None,
                    "soul-manifest",
                    f"{where}: {err['msg']}",
                    f'follow schemas/{SCHEMA_ID}.json ("schema": "{SCHEMA_ID}")',
                )
    secrets = {v for k, v in secret_values.items() if is_secret_key(k) and len(v) >= MIN_SECRET_LEN}
    # and the credentials inside any URL value (DATABASE_URL=postgres://user:pass@…, SOUL_REPO)
    secrets |= {c for v in secret_values.values() for c in url_credentials(v) if len(c) >= MIN_SECRET_LEN}
    for rel in files:
        for patterns, rule, what in (
            (CHAT_LOGS, "soul-chat-log", "a raw chat log"),
            (LOCK_FILES, "soul-lock-file", "a lock file"),
            (RUNTIME_STATE, "soul-runtime-state", "runtime state"),
        ):
            pat = _matches(rel, patterns)
            if pat:
                bad(rel, None, rule, f"{rel} looks like {what} ({pat})", f"remove {rel} from the soul repo")
        text = (checkout / rel).read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), start=1):
            if any(s in line for s in secrets):
                bad(
                    rel,
                    lineno,
                    "soul-agent-secret",
                    f"{rel}:{lineno} contains a value of the agent's own .env secrets",
                    "remove it and rotate the secret: it is in the repo's history",
                )
    problems.extend(_scan(checkout, files, agent_name))
    return problems


def _scan(checkout: Path, files: list[str], agent_name: str) -> list[Problem]:
    from detect_secrets.core.secrets_collection import SecretsCollection
    from detect_secrets.settings import default_settings

    found = SecretsCollection(root=str(checkout))
    with default_settings():
        for rel in files:
            found.scan_file(rel)
    out = []
    for filename, secret in found:
        out.append(
            Problem(
                (Location(Path(filename), secret.line_number),),
                f"soul of {agent_name}: {filename}:{secret.line_number} looks like a secret ({secret.type})",
                "remove it from the soul (and rotate it); secrets belong in the agent's .env",
                rule="soul-secret",
            )
        )
    return out


def check_agent_soul(agent_name: str, env_path: Path, env_values: Mapping[str, str], cache_dir: Path) -> list[Problem]:
    """Fetch and validate the agent's SOUL_REPO at SOUL_REF; [] when it has none."""
    repo = env_values.get("SOUL_REPO")
    if not repo:
        return []
    try:
        fetched = fetch(repo, env_values.get("SOUL_REF") or None, cache_dir / "souls")
    except SoulError as exc:
        return [Problem((Location(env_path, None, "SOUL_REPO"),), str(exc), "see the message", rule="soul-fetch")]
    problems = validate(fetched.path, agent_name, env_values, env_path)
    return [
        Problem((Location(env_path, None, "SOUL_REPO"), *p.locations), p.message, p.fix, rule=p.rule) for p in problems
    ]


def bundle(repo: str, commit: str, out: Path, cache_dir: Path) -> Path:
    """A git bundle holding exactly COMMIT, so hosts get the same bytes without reaching REPO."""
    key = hashlib.sha256(repo.encode()).hexdigest()[:16]
    mirror = cache_dir / f"{key}.git"
    if not mirror.exists():
        fetch(repo, commit, cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _git("--git-dir", str(mirror), "tag", "-f", "warden-pinned", commit)
    _git("--git-dir", str(mirror), "bundle", "create", str(out), "warden-pinned")
    return out


def init(dest: Path, agent_name: str, display_name: str, display_locale: str, author: str) -> str:
    """Scaffold a soul repo that passes validate(); returns its first commit."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = {
        "schema": SCHEMA_ID,
        "agent_id": agent_name,
        "display_name": display_name,
        "provenance": {"origin": f"invoke soul-init {agent_name}", "author": author},
        "privacy": {
            "private": ["memories/curated/**"],
            "sharing": [{"path": "skills/**", "share_with": ["harness:*"]}],
        },
        "adapters": {},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (dest / "SOUL.md").write_text(f"# {display_name}\n\nWho {display_name} is: values, voice, boundaries.\n")
    (dest / "USER.md").write_text(f"# The people {display_name} works with\n\nPreferred language: {display_locale}.\n")
    (dest / "IDENTITY.md").write_text(f"# Identity\n\nName: {display_name}\nAgent: {agent_name}\n")
    (dest / ".gitignore").write_text(".env\n*.lock\nlogs/\nstate/\n")
    _git("init", "--quiet", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git(
        "-c",
        "user.name=warden-provision",
        "-c",
        f"user.email={agent_name}@warden.invalid",
        "commit",
        "--quiet",
        "-m",
        f"Soul of {display_name}: scaffold from invoke soul-init",
        cwd=dest,
    )
    return _git("rev-parse", "HEAD", cwd=dest)


def is_commit_hash(ref: str | None) -> bool:
    return bool(ref and re.fullmatch(r"[0-9a-f]{40}", ref))


def prepare_bundles(
    agents: list[tuple[str, str, str, str | None]], build_dir: Path, cache_dir: Path
) -> list[dict[str, str]]:
    """For (host, agent, repo, ref) of each agent with a soul: validate nothing here, bundle the
    pinned commit into build/<host>/.warden/souls/<agent>.bundle and describe it for the role."""
    out = []
    for host, agent, repo, ref in agents:
        fetched = fetch(repo, ref, cache_dir)
        path = bundle(repo, fetched.commit, build_dir / host / ".warden" / "souls" / f"{agent}.bundle", cache_dir)
        out.append({"host": host, "name": agent, "bundle": str(path), "commit": fetched.commit})
    return out
