# Everyday recipes; `just` comes with the package (rust-just). `just --list` shows them.

# validate every agent and the fleet
check:
    invoke check

# render build/<host>/ for every host
render:
    invoke render

# dry run against the hosts: exit 0 nothing to do, 2 changes pending
plan host="":
    invoke plan {{ if host != "" { "--host " + host } else { "" } }}

# the same dry run through Ansible
apply-check:
    ansible-playbook site.yml --check --diff

# apply to every host and bhyve guest
apply *args:
    ansible-playbook site.yml {{ args }}

# install what the tests need and run every test
test:
    sh scripts/test

# a FreeBSD VM running site.yml with examples/vagrant/
vm:
    vagrant up
