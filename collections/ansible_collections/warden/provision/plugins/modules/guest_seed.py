#!/usr/bin/python
"""Seed a just-created bhyve guest: our user-data plus an SSH host key made here, pinned."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: guest_seed
short_description: Put our user-data and a fresh SSH host key into a vm-bhyve guest's cloud-init seed
description:
  - C(vm create -C) writes the seed's meta-data and network-config (with the MAC it generated)
    and a user-data that only gives keys to nuageinit's default user (lib/vm-core
    core::create_cloud_init). This replaces the user-data with ours, adds an ed25519 host key
    generated on the host (nuageinit C(ssh_keys)), and rebuilds seed.iso the way vm-bhyve does
    (C(makefs -t cd9660 -o R,L=cidata)), readable by root only.
  - The public half is kept next to the guest as C(warden-ssh_host_ed25519_key.pub), so the
    controller can check the guest's host key on the first connection. A guest with that file
    is left alone (the seed is read at first boot only, nuageinit(7)).
options:
  name:
    description: The guest's vm-bhyve name.
    type: str
    required: true
  vm_dir:
    description: vm-bhyve's vm_dir (a plain path).
    type: str
    required: true
  user_data:
    description: >-
      Path on the host of our user-data (C(#cloud-config), then a block-style YAML mapping
      that both nuageinit YAML parsers read the same, provision/cloudyaml.py).
    type: str
    required: true
author: warden-provision maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Seed the guest
  warden.provision.guest_seed:
    name: novavm
    vm_dir: /vm
    user_data: /usr/local/etc/warden/guests/novavm/user-data
"""

RETURN = r"""
host_key:
  description: The guest's pinned public host key line ("" in check mode before it exists).
  type: str
  returned: always
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.warden.provision.plugins.module_utils.cloudyaml import UnsafeYaml, extend, ssh_host_key

PINNED = "warden-ssh_host_ed25519_key.pub"


def write_private(path: str, data: str) -> None:
    """Create PATH for root only (O_EXCL after an unlink: never through a planted link)."""
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "vm_dir": {"type": "str", "required": True},
            "user_data": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    guest = os.path.join(module.params["vm_dir"], module.params["name"])
    pinned = os.path.join(guest, PINNED)
    if os.path.isfile(pinned):
        with open(pinned, encoding="utf-8") as fh:
            module.exit_json(changed=False, host_key=fh.read().strip())
    cloud_init = os.path.join(guest, ".cloud-init")
    if not os.path.isdir(cloud_init):
        module.fail_json(msg=f"{cloud_init} is missing: the guest was not created with `vm create -C`")
    if module.check_mode:
        module.exit_json(changed=True, host_key="")
    with open(module.params["user_data"], encoding="utf-8") as fh:
        text = fh.read()
    work = tempfile.mkdtemp(prefix=".warden-seed.", dir=guest)  # mode 0700
    try:
        key = os.path.join(work, "ssh_host_ed25519_key")
        module.run_command(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", module.params["name"], "-f", key], check_rc=True
        )
        with open(key, encoding="utf-8") as fh:
            private = fh.read()
        with open(key + ".pub", encoding="utf-8") as fh:
            public = fh.read().strip()
        # nuageinit ssh_keys: <algo>_private / <algo>_public become /etc/ssh/ssh_host_<algo>_key[.pub]
        # (libexec/nuageinit/nuageinit ssh_keys), written in the YAML both its parsers read alike.
        try:
            seeded = extend(text, ssh_host_key("ed25519", private, public))
        except UnsafeYaml as exc:
            module.fail_json(msg=f"{module.params['user_data']}: {exc}; render the guest again (invoke render)")
        os.chmod(cloud_init, 0o700)
        user_data = os.path.join(cloud_init, "user-data")
        write_private(user_data, seeded)
        seed = os.path.join(guest, "seed.iso")
        if os.path.lexists(seed):
            os.unlink(seed)
        # The same image vm-bhyve makes (lib/vm-core core::create_cloud_init), root-only: it holds a private key.
        old = os.umask(0o077)
        try:
            module.run_command(["makefs", "-t", "cd9660", "-o", "R,L=cidata", seed, cloud_init], check_rc=True)
        finally:
            os.umask(old)
        os.chmod(seed, 0o600)
        os.unlink(user_data)  # seed.iso holds it; no second copy of the private key
        write_private(pinned + ".new", public + "\n")
        os.chmod(pinned + ".new", 0o644)
        os.replace(pinned + ".new", pinned)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    module.exit_json(changed=True, host_key=public)


if __name__ == "__main__":
    main()
