"""What ansible-test's pip bootstrap runs, from the pip wheel Python itself ships.

ansible-test creates each sanity virtualenv without pip, then runs a cached
`get-pip.py` that it first downloads from ci-files.testing.ansible.com — a host that is
not a package registry, so unreachable where only registries are.  get-pip.py puts an
embedded pip wheel on sys.path and runs `pip install <its arguments>`; this does the
same with the wheel `ensurepip` bundles, so the pinned pip and the sanity requirements
still come from the configured package index.  tests/test_sanity.py copies it to the
path ansible-test reads (~/.ansible/test/cache/get_pip_<version>.py) when it is absent.
"""

from __future__ import annotations

import ensurepip
import sys
from pathlib import Path


def main() -> None:
    bundled = Path(ensurepip.__file__).parent / "_bundled"
    wheel = next(iter(sorted(bundled.glob("pip-*.whl"))), None)
    if wheel is None:
        sys.exit(f"no pip wheel bundled with this Python under {bundled} (fix: install python3-venv)")
    sys.path.insert(0, str(wheel))
    from pip._internal.cli.main import main as pip_main

    # get-pip.py's arguments are pip-install's, without the command name, plus its own
    # --no-setuptools/--no-wheel (do not add those two): nothing to add here, so dropped.
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    sys.exit(pip_main(["install", *args]))


if __name__ == "__main__":
    main()
