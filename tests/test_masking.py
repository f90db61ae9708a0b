"""Secrets stay secret (docs/security.md): credentials in URLs are masked wherever the tool
prints, controller-only keys do not reach the host, and secret-looking keys cover the
usual spellings.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from provision.inventory import load_inventory
from provision.models import is_secret_key
from provision.plan import MASK, mask_secrets, unified
from provision.registry import load_fleet
from provision.render import render_fleet
from provision.soul import fetch, validate

from .conftest import REPO, Registry
from .test_soul import make_repo

# Not real credentials: refused connections on 127.0.0.1 port 9 (discard), nothing leaves the host.
TOKEN = "FAKE-DEPLOY-TOKEN-0000"
PASSWORD = "FAKE-PASSWORD-0000"
SOUL_URL = f"https://deploy:{PASSWORD}@127.0.0.1:9/souls/atlas.git"
TOKEN_URL = f"https://{TOKEN}@127.0.0.1:9/souls/atlas.git"


def invoke(reg: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **reg.env(), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "text,shown",
    [
        (SOUL_URL, f"https://{MASK}@127.0.0.1:9/souls/atlas.git"),
        (TOKEN_URL, f"https://{MASK}@127.0.0.1:9/souls/atlas.git"),
        ("DATABASE_URL=postgres://app:p@ss@db.home.arpa/app", f"DATABASE_URL=postgres://{MASK}@db.home.arpa/app"),
        ("git@example.invalid:souls/atlas.git", "git@example.invalid:souls/atlas.git"),  # scp-like: no secret
        ("https://example.invalid/x.git", "https://example.invalid/x.git"),
    ],
)
def test_url_credentials_are_masked_whole_password_or_token(text: str, shown: str) -> None:
    from provision.masking import mask_url_credentials

    assert mask_url_credentials(text) == shown


def test_a_token_used_as_the_urls_user_is_masked_in_plan() -> None:
    text = f"SOUL_REPO={TOKEN_URL}\nNOTE=see {SOUL_URL}\n"
    assert TOKEN not in mask_secrets(text) and PASSWORD not in mask_secrets(text)
    diff = "".join(unified("", text, "/home/atlas/clawdie/notes"))
    assert TOKEN not in diff and PASSWORD not in diff and f"https://{MASK}@127.0.0.1:9" in diff


@pytest.mark.parametrize("url", [SOUL_URL, TOKEN_URL])
def test_check_and_soul_check_never_print_soul_repo_credentials(registry: Registry, url: str) -> None:
    registry.write_env("atlas", f"AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nSOUL_REPO={url}\nSOUL_REF=main\n")
    for command in ("check", "soul-check"):
        result = invoke(registry, command, *(["atlas"] if command == "soul-check" else []))
        out = result.stdout + result.stderr
        assert result.returncode == 1, out
        assert "cannot fetch" in out and f"https://{MASK}@127.0.0.1:9" in out, out
        assert TOKEN not in out and PASSWORD not in out


def test_check_json_never_prints_soul_repo_credentials(registry: Registry) -> None:
    import json

    registry.write_env("atlas", f"AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nSOUL_REPO={TOKEN_URL}\nSOUL_REF=main\n")
    result = invoke(registry, "check", "--json")
    assert result.returncode == 1 and TOKEN not in result.stdout + result.stderr
    document = json.loads(result.stdout)  # masking keeps the document well-formed
    assert any(f"https://{MASK}@127.0.0.1:9" in p["message"] for p in document["problems"])


def test_add_agent_does_not_print_soul_repo_credentials(registry: Registry) -> None:
    result = invoke(registry, "add-agent", "atlas", "--soul-repo", SOUL_URL, "--soul-ref", "main")
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr and MASK in result.stdout


def test_soul_repo_is_kept_on_the_controller_not_shipped_to_the_host(registry: Registry) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    text = (
        f"AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nSOUL_REPO={SOUL_URL}\nSOUL_REF={commit}\n"
        "DATABASE_URL=postgres://app:FAKE-DB-0000@db.home.arpa/app\n"
    )
    registry.write_env("atlas", text)
    hosts, _ = load_inventory(registry.inventory)
    render_fleet(load_fleet(registry.agents, hosts), registry.build)
    shipped = (registry.build / "fbsd1/home/atlas/clawdie/.env").read_text()
    assert PASSWORD not in shipped and "SOUL_REPO=" not in shipped
    assert "# SOUL_REPO: kept on the controller" in shipped
    # Everything else arrives as written, line for line: the agent's own secrets are its own.
    assert f"SOUL_REF={commit}\n" in shipped and "DATABASE_URL=postgres://app:FAKE-DB-0000@" in shipped
    assert shipped.count("\n") == text.count("\n") + 2  # the two header lines


@pytest.mark.parametrize(
    "key", ["SMTP_PASS", "DB_PASSWD", "MAIL_PASSWORD", "GPG_PASSPHRASE", "BASIC_AUTH", "SENTRY_DSN", "DB_PW"]
)
def test_secret_looking_keys_include_pass_and_passwd(key: str) -> None:
    assert is_secret_key(key)
    assert mask_secrets(f"{key}=FAKE-0000\n") == f"{key}={MASK}\n"


@pytest.mark.parametrize("key", ["AGENT_NAME", "PASSTHROUGH_MODE", "AUTHOR", "COMPASS_HEADING"])
def test_plain_keys_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_urls_with_userinfo_are_secrets_of_the_agent(registry: Registry) -> None:
    registry.write_env(
        "atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nDATABASE_URL=postgres://app:FAKE-DB-0000@db/app\n"
    )
    hosts, _ = load_inventory(registry.inventory)
    (agent,) = load_fleet(registry.agents, hosts).agents
    assert "app:FAKE-DB-0000" in agent.secrets().values()
    from provision.masking import url_credentials

    assert url_credentials("postgres://app:FAKE-DB-0000@db/app") == ["app:FAKE-DB-0000"]


def test_a_soul_holding_the_database_urls_password_is_refused(registry: Registry) -> None:
    repo = make_repo(registry.root / "soul", {"memories/curated/db.md": "the db is app:FAKE-DB-0000 at db\n"})
    registry.write_env(
        "atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nDATABASE_URL=postgres://app:FAKE-DB-0000@db/app\n"
    )
    hosts, _ = load_inventory(registry.inventory)
    (agent,) = load_fleet(registry.agents, hosts).agents
    values = {**agent.extra, "AGENT_NAME": "atlas"}  # as check and soul-check pass them
    found = validate(fetch(str(repo), None, registry.root / "cache").path, "atlas", values, repo / ".env")
    assert [p.rule for p in found] == ["soul-agent-secret"] and all("FAKE-DB" not in str(p) for p in found)


def test_a_key_set_twice_is_warned_about_without_its_secret_values() -> None:
    from provision.cli import parse_set

    _, warnings = parse_set(
        ["API_TOKEN=FAKE-TOKEN-1111", "API_TOKEN=FAKE-TOKEN-2222", f"SOUL_REPO={SOUL_URL}", "SOUL_REPO=/x"]
    )
    text = "\n".join(warnings)
    assert "FAKE-TOKEN" not in text and PASSWORD not in text
    assert f"--set API_TOKEN is given twice ({MASK}, then {MASK})" in text and f"https://{MASK}@" in text
