"""What a bhyve guest is created from: its image and its cloud-init seed (docs/freebsd.md#vm-bhyve).

vm-bhyve's `vm create -C -n …` writes the seed's meta-data and network-config itself
(the network-config must match the MAC it generates at create time: lib/vm-core
core::create_cloud_init), but its user-data only gives `-k` keys to nuageinit's default
user `freebsd`, created with password `freebsd` (libexec/nuageinit/nuageinit
default_user).  So the user-data is ours, written by provision/cloudyaml.py in the YAML
subset both nuageinit parsers read alike (docs/freebsd.md#nuageinit-yaml): the operator's
key on root, no default user (nuageinit creates `freebsd` only when `users` is absent or
lists "default"), password logins off, and root logins by key only.
The host adds the guest's SSH host key to it (the module warden.provision.guest_seed), so the
first connection can be checked against a key we made, never accepted blindly.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from .cloudyaml import Node, dump
from .models import Host
from .problems import Location, Problem

# One OpenSSH public key line: type, base64 blob, optional comment of plain characters.
PUBKEY_RE = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]{16,8192}={0,3}(?: [A-Za-z0-9@._+:-]{1,128})?"
)
# An image the host fetches (`vm img URL`) or a file already on it; no `#`, quote or space:
# the name lands on a vm-bhyve command line and vm-bhyve configs cannot escape (docs/freebsd.md#vm-bhyve).
IMAGE_URL_RE = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%+-]+)+")
IMAGE_PATH_RE = re.compile(r"(?:/[A-Za-z0-9._+-]+)+")
# docs/freebsd.md#vm-bhyve: the FreeBSD BASIC-CLOUDINIT images boot with nuageinit.
DEFAULT_IMAGE_URL = (
    "https://download.freebsd.org/releases/VM-IMAGES/{release}/amd64/Latest/"
    "FreeBSD-{release}-amd64-BASIC-CLOUDINIT-ufs.raw.xz"
)
RELEASE_RE = re.compile(r"[0-9]{2}\.[0-9]-(?:RELEASE|STABLE|CURRENT|BETA[0-9]|RC[0-9])")


def _loc(host: Host, key: str) -> Location:
    return Location(host.source, host.line, f"{host.name}.{key}")


def image_source(host: Host) -> str | Problem:
    """The image URL or host path: warden_guest_image, else the host release's cloud image."""
    if host.guest_image is not None:
        if IMAGE_URL_RE.fullmatch(host.guest_image) or IMAGE_PATH_RE.fullmatch(host.guest_image):
            return host.guest_image
        return Problem(
            (_loc(host, "warden_guest_image"),),
            "warden_guest_image is neither an http(s) URL nor an absolute path of plain characters",
            "give the URL of a FreeBSD BASIC-CLOUDINIT .raw or .raw.xz image, or its path on the host",
            rule="guest-image",
        )
    if not RELEASE_RE.fullmatch(host.release):
        return Problem(
            (_loc(host, "warden_release"),),
            f"no default guest image for release {host.release!r}",
            "set warden_guest_image to the URL or host path of a BASIC-CLOUDINIT image",
            rule="guest-image",
        )
    return DEFAULT_IMAGE_URL.format(release=host.release)


def image_name(source: str) -> str:
    """What `vm create -i` takes: a host path as is, else the file `vm img` leaves in $vm_dir/.img.

    core::img fetches into the img datastore and core::decompress drops a `.xz` suffix
    (lib/vm-core); core::write_img finds a bare name there (datastore::img_find).
    """
    if source.startswith("/"):
        return source
    name = PurePosixPath(source).name
    return name[: -len(".xz")] if name.endswith(".xz") else name


def ssh_key(host: Host, home: Path | None = None) -> str | Problem:
    """The operator's public key for the guests: warden_guest_ssh_key (the key, or a file
    holding it), else the only ~/.ssh/id_*.pub on the controller."""
    value = host.guest_ssh_key
    where = _loc(host, "warden_guest_ssh_key")
    if value is None:
        home = home if home is not None else Path.home()
        found = sorted((home / ".ssh").glob("id_*.pub"))
        if len(found) != 1:
            seen = ", ".join(p.name for p in found) or "none"
            return Problem(
                (where,),
                f"host {host.name} has bhyve guests but no warden_guest_ssh_key, and {home}/.ssh "
                f"has {len(found)} id_*.pub files ({seen}): which key may log in to the guests?",
                f"set warden_guest_ssh_key on host {host.name} to a public key line or the path of a .pub file",
                rule="guest-ssh-key",
            )
        value = str(found[0])
    text = value
    if not value.startswith(("ssh-", "ecdsa-", "sk-")):
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return Problem(
                (where,),
                f"cannot read the guest SSH key {path}: {exc.__class__.__name__}",
                "point warden_guest_ssh_key at a readable .pub file, or give the key line itself",
                rule="guest-ssh-key",
            )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1 or not PUBKEY_RE.fullmatch(lines[0]):
        return Problem(
            (where,),
            "the guest SSH key is not one OpenSSH public key line (type, base64, optional plain comment)",
            "use the one line of a .pub file, e.g. ~/.ssh/id_ed25519.pub; never a private key",
            rule="guest-ssh-key",
        )
    return lines[0]


def user_data(key: str, header: str = "") -> str:
    """The guest's user-data (libexec/nuageinit/nuageinit: users, ssh_pwauth, write_files).

    nuageinit wants `#cloud-config` on the first line (nuageinit(7)); HEADER's lines
    follow as YAML comments, then the block-style body (provision/cloudyaml.py).

    FreeBSD's sshd refuses root logins unless told otherwise (sshd_config(5)
    PermitRootLogin); the first value sshd reads wins and the stock file sets none, so an
    appended line decides.  nuageinit runs before sshd starts (nuageinit(7)).  The line
    goes in without a final line break: neither parser can be given one the same way
    (docs/freebsd.md#nuageinit-yaml); sshd reads an unterminated last line, and
    nuageinit appends nothing to sshd_config after write_files (nuageinit: ssh_pwauth
    runs before write_files).
    """
    config: dict[str, Node] = {
        "users": [{"name": "root", "ssh_authorized_keys": [key]}],
        "ssh_pwauth": False,
        "write_files": [
            {"path": "/etc/ssh/sshd_config", "append": True, "content": "PermitRootLogin prohibit-password"}
        ],
    }
    return dump(config, header)


def network_arg(ip: str, prefixlen: int, gateway: str, nameservers: tuple[str, ...], hostname: str) -> str:
    """`vm create -n`: split on `;` and `=` by core::create_cloud_init (lib/vm-core); the
    parts are addresses and a checked hostname, so none holds either character."""
    return f"ip={ip}/{prefixlen};gateway={gateway};nameservers={','.join(nameservers)};hostname={hostname}"


# A login name pf's `user` can name (escape.pf_user takes the same characters).
JUMP_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def jump_user(host: Host) -> str | None:
    """Who opens the SSH connections to HOST's guests: playbooks/guests.yml jumps through the
    host as its `ansible_user` (`ssh -W`), and sshd opens that forwarded connection in the
    session's process, which runs as that user, so pf sees that user's socket (pf.conf(5)
    user). None when the inventory does not set it: ssh then logs in with the controller's
    login name, unknown here, and only root is granted (README "bhyve agents")."""
    given = host.ansible_vars.get("ansible_user")
    return given if isinstance(given, str) else None


def guest_problems(hosts: list[Host], with_guests: set[str], home: Path | None = None) -> list[Problem]:
    """Every host with bhyve guests needs an image and a key (what `render` needs to seed them)."""
    out: list[Problem] = []
    for host in hosts:
        if host.name not in with_guests:
            continue
        for found in (image_source(host), ssh_key(host, home)):
            if isinstance(found, Problem):
                out.append(found)
        if not IMAGE_PATH_RE.fullmatch(host.vm_dir):
            # the seed and the pinned host key are files under $vm_dir/<guest> (the module warden.provision.guest_seed)
            out.append(
                Problem(
                    (_loc(host, "warden_vm_dir"),),
                    f"warden_vm_dir {host.vm_dir!r} is not a plain absolute path",
                    "give vm-bhyve's vm_dir as a directory path such as /vm (a zfs: datastore is not supported)",
                    rule="guest-vm-dir",
                )
            )
        user = jump_user(host)
        if user is not None and not JUMP_USER_RE.fullmatch(user):
            # the anchor grants the jump's user the guests' sshd by name (isolation.py)
            out.append(
                Problem(
                    (_loc(host, "ansible_user"),),
                    f"ansible_user of host {host.name} is {user!r}, not a plain login name: the guests "
                    "are reached through this host as that user, and pf must name it",
                    "set ansible_user on the host in inventory/hosts.yml to the login name Ansible uses "
                    "(root, or your admin user with become)",
                    rule="guest-jump-user",
                )
            )
    return out
