"""Credentials inside URLs, found and masked (standard library only: the CLI imports it).

A URL's userinfo — `scheme://USER:PASSWORD@host` or a token used as the user,
`https://glpat-…@host/x.git` — is a secret wherever it appears: check, soul-check and
plan print values and git's messages, so every line they print goes through
`mask_url_credentials` (docs/security.md).
"""

from __future__ import annotations

import re

MASK = "********"
# Greedy up to the last '@' before the path: a password may itself hold an '@'. Not
# across quotes, blanks or '<>' (RFC 3986 userinfo has none), so a JSON document or an
# HTML-ish line stays well-formed when masked.
URL_USERINFO_RE = re.compile(r"""\b([A-Za-z][A-Za-z0-9+.-]*://)([^/\s"<>\\]+)@""")


def url_credentials(value: str) -> list[str]:
    """The userinfo parts (user:password, or a token) of every URL in VALUE."""
    return [m.group(2) for m in URL_USERINFO_RE.finditer(value)]


def mask_url_credentials(text: str) -> str:
    """TEXT with the userinfo of every URL in it masked: https://********@host/x.git."""
    return URL_USERINFO_RE.sub(lambda m: m.group(1) + MASK + "@", text)
