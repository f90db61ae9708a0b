# Shared by scripts/demo and scripts/test: a virtualenv in .venv with this package installed.
# Debian's own python3 is "externally managed" (PEP 668), so nothing is pip-installed system-wide.

apt_install() {
    missing=""
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "==> apt-get install$missing"
        apt-get update -q >/dev/null
        # $missing is a list of package names: split on purpose.
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
    fi
}

make_venv() {
    extras="$1"
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv"
        python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; python3 -m venv .venv; }
    fi
    echo "==> pip install -e .$extras"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
    PATH="$PWD/.venv/bin:$PATH"
    export PATH
}
