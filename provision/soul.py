"""Soul repos: fetched at a ref, validated, pinned to a commit, bundled for the hosts (README.md#soul-repos).

Git is the real `git` CLI.  A soul repo is checked before it goes anywhere: the core
files, the manifest against its schema, and no secrets, chat logs, lock files or runtime
state.  Problems name the file in the repo, the line and the rule — never the secret.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
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
# A soul is text people write: caps keep a huge file from costing minutes of scanning.
MAX_FILE_BYTES = 1 << 20
MAX_TREE_BYTES = 32 << 20
MAX_FILES = 5000
GIT_TIMEOUT = 120  # seconds for any one git call, network ones included
# Transports git may use for SOUL_REPO (git(1) GIT_ALLOW_PROTOCOL): no `ext::` (runs a
# command), no `fd::` (reads a descriptor and can wait forever).
GIT_PROTOCOLS = "file:git:http:https:ssh"
# The single commit each bundle holds: the checked tree, no history (docs/security.md).
SNAPSHOT_IDENT = ("warden-provision", "soul@warden.invalid")


class SoulError(Exception):
    """Fetching failed; the message names the repo, the ref and the fix."""


@dataclass(frozen=True)
class Fetched:
    path: Path  # the commit's tree, exported: what validate() reads
    commit: str
    tree: str = ""  # the tree object: what a bundle ships (snapshot)
    problems: tuple[Problem, ...] = ()  # tree-level: sizes, submodules


def _git_env() -> dict[str, str]:
    return {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "SSH_ASKPASS": "true",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def _git_run(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> bytes:
    """Run git with a timeout, no terminal and only the allowed transports; stdout as bytes.

    git runs in a session of its own so that the timeout ends its helpers too (ssh,
    git-remote-https): killing git alone leaves them holding the pipes, and the read
    of its output would wait for them (setsid(2), killpg(2)).
    """
    proc = subprocess.Popen(
        ["git", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**_git_env(), **(env or {})},
        start_new_session=True,
    )
    try:
        out, err_bytes = proc.communicate(timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SoulError(f"git {args[0] if args else ''} timed out after {GIT_TIMEOUT} s") from None
    if proc.returncode != 0:
        err = err_bytes.decode("utf-8", "replace").strip()
        raise SoulError(mask_url_credentials(err.splitlines()[-1]) if err else "git failed")
    return out


def _git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    return _git_run(*args, cwd=cwd, env=env).decode("utf-8", "replace").strip()


def _tree_entries(mirror: Path, commit: str) -> list[tuple[str, str, str, int, str]]:
    """(mode, type, object, size, path) of every entry of COMMIT's tree (git ls-tree -r -l)."""
    out = _git_run("--git-dir", str(mirror), "ls-tree", "-r", "-l", "-z", "--full-tree", commit)
    entries = []
    for item in out.split(b"\0"):
        if not item:
            continue
        meta, path = item.split(b"\t", 1)
        mode, kind, obj, size = meta.decode().split()
        entries.append((mode, kind, obj, int(size) if size.isdigit() else 0, path.decode("utf-8", "surrogateescape")))
    return entries


def _tree_problems(entries: list[tuple[str, str, str, int, str]]) -> list[Problem]:
    out = []

    def bad(rel: str, message: str, fix: str) -> None:
        out.append(Problem((Location(Path(rel)),), message, fix, rule="soul-size"))

    for mode, kind, _, size, rel in entries:
        if kind == "blob" and mode != "120000" and size > MAX_FILE_BYTES:
            bad(
                rel,
                f"{rel} is {size} bytes; a soul file may have at most {MAX_FILE_BYTES}",
                f"remove {rel} from the soul repo (runtime data and media belong elsewhere)",
            )
        elif kind == "commit":
            bad(rel, f"{rel} is a git submodule, which is not checked and not shipped", f"remove the submodule {rel}")
    total = sum(size for _, kind, _, size, _ in entries if kind == "blob")
    if total > MAX_TREE_BYTES or len(entries) > MAX_FILES:
        bad(
            ".",
            f"the soul holds {len(entries)} files, {total} bytes; at most {MAX_FILES} files and {MAX_TREE_BYTES} bytes",
            "keep runtime data, logs and media out of the soul repo",
        )
    return out


def _export(mirror: Path, entries: list[tuple[str, str, str, int, str]], dest: Path) -> None:
    """Write every blob and symlink of the tree under DEST as git has them (no .gitattributes
    export rules, unlike git archive: what is checked is exactly the tree that ships)."""
    blobs = [e for e in entries if e[1] == "blob" and (e[0] == "120000" or e[3] <= MAX_FILE_BYTES)]
    result = subprocess.run(
        ["git", "--git-dir", str(mirror), "cat-file", "--batch"],
        input="".join(f"{obj}\n" for _, _, obj, _, _ in blobs).encode(),
        capture_output=True,
        env=_git_env(),
        timeout=GIT_TIMEOUT,
    )
    if result.returncode != 0:
        raise SoulError("git cat-file failed")
    data, pos = result.stdout, 0
    for mode, _, _, _, rel in blobs:
        header_end = data.index(b"\n", pos)
        size = int(data[pos:header_end].split()[2])
        content = data[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1
        parts = rel.split("/")
        if any(part in ("", ".", "..", ".git") for part in parts):
            raise SoulError(f"the soul's tree holds an unsafe path {rel!r}")
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "120000":
            target.symlink_to(content.decode("utf-8", "surrogateescape"))
        else:
            target.write_bytes(content)
            target.chmod(0o755 if mode == "100755" else 0o644)


def _repo_key(repo: str) -> str:
    return hashlib.sha256(repo.encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _cached(repo: str, ref: str | None, cache_dir: Path) -> Fetched | None:
    """A pinned commit already exported with a clean tree: what fetch would return, with no git
    call.  A full commit hash names its content for good, so neither fetching the origin again
    nor asking the mirror can change it (site.yml checks and bundles every soul on every run)."""
    if not is_commit_hash(ref):
        return None
    assert ref is not None
    base = cache_dir / f"{_repo_key(repo)}-{ref}"
    try:
        tree_id = base.with_name(base.name + ".tree").read_text().strip()
    except OSError:
        return None
    return Fetched(base, ref, tree_id) if re.fullmatch(r"[0-9a-f]{40}", tree_id) and base.is_dir() else None


def fetch(repo: str, ref: str | None, cache_dir: Path, *, cached: bool = True) -> Fetched:
    """Mirror REPO into the cache and export the tree of REF (default HEAD) at its commit
    (a pinned commit exported before comes from the cache unless CACHED is false)."""
    from filelock import FileLock

    found = _cached(repo, ref, cache_dir) if cached else None
    if found is not None:
        return found
    key = _repo_key(repo)
    cache_dir.mkdir(parents=True, exist_ok=True)
    mirror = cache_dir / f"{key}.git"
    with FileLock(str(cache_dir / f"{key}.lock"), timeout=300):
        try:
            if mirror.exists():
                _git("--git-dir", str(mirror), "fetch", "--prune", "--quiet", "origin")
            else:
                # `--` : a SOUL_REPO can never be read as an option (models.py refuses a leading '-' too)
                _git("clone", "--mirror", "--quiet", "--", repo, str(mirror))
        except SoulError as exc:
            raise SoulError(
                f"{mask_url_credentials(repo)}: cannot fetch ({mask_url_credentials(str(exc))}) "
                "(fix: check SOUL_REPO; the repo must be reachable from this machine)"
            ) from None
        try:
            commit = _git(
                "--git-dir", str(mirror), "rev-parse", "--verify", "--end-of-options", f"{ref or 'HEAD'}^{{commit}}"
            )
            tree_id = _git("--git-dir", str(mirror), "rev-parse", "--verify", f"{commit}^{{tree}}")
        except SoulError:
            raise SoulError(
                f"{mask_url_credentials(repo)}: ref {ref!r} not found "
                "(fix: set SOUL_REF to a branch, tag or commit that exists)"
            ) from None
        entries = _tree_entries(mirror, commit)
        tree = cache_dir / f"{key}-{commit}"
        if not tree.exists():
            tmp = cache_dir / f".{key}-{commit}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _export(mirror, entries, tmp)
            tmp.rename(tree)
        problems = tuple(_tree_problems(entries))
        if not problems:  # written last: _cached trusts only a complete, clean export
            _write_atomic(tree.with_name(tree.name + ".tree"), tree_id.encode() + b"\n")
        return Fetched(tree, commit, tree_id, problems)


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

    files: list[str] = []  # regular text files within the caps: what is scanned
    listed: list[str] = []  # every regular file and symlink: what the name rules see
    total = 0
    for rel, entry in _walk(checkout):
        listed.append(rel)
        if entry.is_symlink():
            target = os.readlink(entry.path)
            inside = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            if os.path.isabs(target) or inside == ".." or inside.startswith("../") or inside.split("/")[0] == ".git":
                bad(
                    rel,
                    None,
                    "soul-symlink",
                    f"{rel} is a symlink to {target[:80]!r}, outside the repo",
                    f"replace {rel} by the file itself, or remove it",
                )
            continue
        size = entry.stat(follow_symlinks=False).st_size
        total += size
        if size > MAX_FILE_BYTES:
            bad(
                rel,
                None,
                "soul-size",
                f"{rel} is {size} bytes; a soul file may have at most {MAX_FILE_BYTES}",
                f"remove {rel} from the soul repo",
            )
            continue
        raw = Path(entry.path).read_bytes()
        if b"\0" in raw:
            bad(
                rel,
                None,
                "soul-binary",
                f"{rel} is not a text file, so it cannot be scanned for secrets",
                f"remove {rel} from the soul repo (a soul is text)",
            )
            continue
        files.append(rel)
    if total > MAX_TREE_BYTES:
        bad(
            ".",
            None,
            "soul-size",
            f"the soul holds {total} bytes; at most {MAX_TREE_BYTES}",
            "keep runtime data, logs and media out of the soul repo",
        )
    for core in CORE_FILES:
        if core not in listed:
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
                    f'follow provision/schemas/{SCHEMA_ID}.json ("schema": "{SCHEMA_ID}")',
                )
    secrets = {v for k, v in secret_values.items() if is_secret_key(k) and len(v) >= MIN_SECRET_LEN}
    # and the credentials inside any URL value (DATABASE_URL=postgres://user:pass@…, SOUL_REPO)
    secrets |= {c for v in secret_values.values() for c in url_credentials(v) if len(c) >= MIN_SECRET_LEN}
    for rel in listed:
        for patterns, rule, what in (
            (CHAT_LOGS, "soul-chat-log", "a raw chat log"),
            (LOCK_FILES, "soul-lock-file", "a lock file"),
            (RUNTIME_STATE, "soul-runtime-state", "runtime state"),
        ):
            pat = _matches(rel, patterns)
            if pat:
                bad(rel, None, rule, f"{rel} looks like {what} ({pat})", f"remove {rel} from the soul repo")
    for rel in files:
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


# detect-secrets filters that would let a secret through: an inline
# `pragma: allowlist secret` (anyone who can commit can write it), file extensions it
# takes for binary (.svg is text), and names it takes for lock or swagger files.
_UNSAFE_FILTERS = (
    "detect_secrets.filters.allowlist.is_line_allowlisted",
    "detect_secrets.filters.heuristic.is_non_text_file",
    "detect_secrets.filters.heuristic.is_lock_file",
    "detect_secrets.filters.heuristic.is_swagger_file",
)
_JOIN_EDGE = re.compile(r"""[\s"'`+\\,]+""")


def _joined(text: str) -> str:
    """Each line glued to the next without the quotes, blanks, '+' or '\\' between them, so a
    secret split over two lines is seen whole: line N of the result is lines N and N+1."""
    lines = text.splitlines()
    return "".join(
        _JOIN_EDGE.sub("", a[::-1], count=1)[::-1] + _JOIN_EDGE.sub("", b, count=1) + "\n"
        for a, b in zip(lines, [*lines[1:], ""], strict=True)
    )


def _scan(checkout: Path, files: list[str], agent_name: str) -> list[Problem]:
    import tempfile

    from detect_secrets.core.secrets_collection import SecretsCollection
    from detect_secrets.settings import default_settings

    found: dict[tuple[str, int], str] = {}
    with default_settings() as settings, tempfile.TemporaryDirectory() as joined_dir:
        settings.disable_filters(*_UNSAFE_FILTERS)
        whole = SecretsCollection(root=str(checkout))
        for rel in files:
            whole.scan_file(rel)
        for filename, secret in whole:
            found.setdefault((filename, secret.line_number), secret.type)
        split = SecretsCollection(root=joined_dir)
        for rel in files:
            target = Path(joined_dir, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_joined((checkout / rel).read_text(encoding="utf-8", errors="replace")))
            split.scan_file(rel)
        for filename, secret in split:
            if (filename, secret.line_number) not in found and (filename, secret.line_number + 1) not in found:
                found[(filename, secret.line_number)] = (
                    f"{secret.type}, split over lines {secret.line_number}-{secret.line_number + 1}"
                )
    return [
        Problem(
            (Location(Path(filename), line),),
            f"soul of {agent_name}: {filename}:{line} looks like a secret ({kind})",
            "remove it from the soul (and rotate it); secrets belong in the agent's .env",
            rule="soul-secret",
        )
        for (filename, line), kind in sorted(found.items())
    ]


def _walk(root: Path) -> list[tuple[str, os.DirEntry[str]]]:
    """Every regular file and symlink under ROOT, never following a symlink, sorted."""
    out: list[tuple[str, os.DirEntry[str]]] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                    out.append((rel, entry))
                elif entry.is_dir(follow_symlinks=False) and not (rel_dir == "" and entry.name == ".git"):
                    stack.append(rel)
    return sorted(out, key=lambda t: t[0])


def checked(fetched: Fetched, agent_name: str, values: Mapping[str, str], source: Path) -> list[Problem]:
    """fetched.problems and validate(), remembered when clean: `site.yml` checks a soul and then
    bundles it in one run, and a tree that passed with the same secrets passes again."""
    secrets = sorted(v for k, v in values.items() if is_secret_key(k) or url_credentials(v))
    rules = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # new rules: check again
    key = json.dumps([fetched.tree, agent_name, secrets, rules])
    marker = fetched.path.with_name(f"{fetched.path.name}.clean-{hashlib.sha256(key.encode()).hexdigest()[:32]}")
    if fetched.tree and marker.exists():
        return []
    problems = [*fetched.problems, *validate(fetched.path, agent_name, values, source)]
    if not problems and fetched.tree:
        marker.touch()
    return problems


def check_agent_soul(agent_name: str, env_path: Path, env_values: Mapping[str, str], cache_dir: Path) -> list[Problem]:
    """Fetch and validate the agent's SOUL_REPO at SOUL_REF; [] when it has none."""
    repo = env_values.get("SOUL_REPO")
    if not repo:
        return []
    try:
        fetched = fetch(repo, env_values.get("SOUL_REF") or None, cache_dir / "souls")
    except SoulError as exc:
        return [Problem((Location(env_path, None, "SOUL_REPO"),), str(exc), "see the message", rule="soul-fetch")]
    problems = checked(fetched, agent_name, env_values, env_path)
    return [
        Problem((Location(env_path, None, "SOUL_REPO"), *p.locations), p.message, p.fix, rule=p.rule) for p in problems
    ]


def snapshot(repo: str, fetched: Fetched, cache_dir: Path) -> str:
    """A commit of exactly FETCHED's tree, with no parent: what ships, and no unchecked history.

    Author, committer and dates are fixed (the source commit's date), so the same checked
    tree always gives the same commit and a host that has it is left alone.
    """
    key = _repo_key(repo)
    # the snapshot of a commit is always the same commit: remembered, no git call next time
    known = cache_dir / f"{key}-{fetched.commit}.snapshot"
    with contextlib.suppress(OSError):
        commit = known.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{40}", commit):
            return commit
    mirror = cache_dir / f"{key}.git"
    if not mirror.exists():
        fetch(repo, fetched.commit, cache_dir, cached=False)
    date = _git("--git-dir", str(mirror), "show", "-s", "--format=%cI", fetched.commit)
    name, email = SNAPSHOT_IDENT
    ident = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date}
    ident |= {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": date}
    message = f"Soul snapshot of {fetched.commit}, as checked by warden-provision"
    commit = _git("--git-dir", str(mirror), "commit-tree", fetched.tree, "-m", message, env=ident)
    _write_atomic(known, commit.encode() + b"\n")
    return commit


def bundle(repo: str, commit: str, out: Path, cache_dir: Path) -> Path:
    """A git bundle holding exactly COMMIT (tagged warden-pinned), so hosts need not reach REPO."""
    key = _repo_key(repo)
    out.parent.mkdir(parents=True, exist_ok=True)
    # made once per snapshot commit and kept in the cache; build/ gets a copy
    cached = cache_dir / f"{key}-{commit}.bundle"
    if not cached.is_file():
        mirror = cache_dir / f"{key}.git"
        if not mirror.exists():
            fetch(repo, commit, cache_dir)
        _git("--git-dir", str(mirror), "tag", "-f", "warden-pinned", commit)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        _git("--git-dir", str(mirror), "bundle", "create", "--quiet", str(tmp), "warden-pinned")
        tmp.replace(cached)
    data = cached.read_bytes()
    if not out.is_file() or out.read_bytes() != data:
        _write_atomic(out, data)
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
    agents: Sequence[tuple[str, str, str, str | None, Mapping[str, str]]], build_dir: Path, cache_dir: Path
) -> list[dict[str, str]]:
    """For (host, agent, repo, ref, .env values) of each agent with a soul: check the pinned
    commit again, and bundle a one-commit snapshot of exactly its tree into
    build/<host>/.warden/souls/<agent>.bundle; describe it for the role.

    Raises SoulError when a ref is not a full commit or the tree does not pass validate():
    nothing is bundled that was not checked (docs/security.md).
    """
    out = []
    for host, agent, repo, ref, values in agents:
        if not is_commit_hash(ref):
            raise SoulError(
                f"soul of {agent}: SOUL_REF={ref or ''} is not a full commit hash (fix: run `invoke soul-pin {agent}`)"
            )
        fetched = fetch(repo, ref, cache_dir)
        problems = checked(fetched, agent, values, Path(".env"))
        if problems:
            raise SoulError(
                f"soul of {agent} at {ref}: {problems[0].message} (fix: {problems[0].fix}; "
                f"see `invoke soul-check {agent}`)"
            )
        commit = snapshot(repo, fetched, cache_dir)
        path = bundle(repo, commit, build_dir / host / ".warden" / "souls" / f"{agent}.bundle", cache_dir)
        out.append({"host": host, "name": agent, "bundle": str(path), "commit": commit, "source": fetched.commit})
    return out
