# Everyday recipes; `just` comes with the package (rust-just). `just --list` shows them.

# recipe arguments reach invoke as they were typed ("$@"), quoting kept
set positional-arguments

# table of agents: host, placement, subnet, gateway, port, jails
list:
    invoke list

# add an agent, e.g. `just add-agent atlas --subnet 10.0.1` (options: invoke add-agent --help)
add-agent name *options:
    invoke add-agent "$@"

# validate every agent and the fleet
check:
    invoke check

# render build/<host>/ for every host
render:
    invoke render

# dry run against the hosts: exit 0 nothing to do, 2 changes pending (not a failure: no "recipe failed")
[no-exit-message]
plan host="":
    invoke plan {{ if host != "" { "--host " + host } else { "" } }}

# read-only preflight of every host (or one): [ OK ] / [FAIL] and the fix
[no-exit-message]
doctor host="":
    invoke doctor {{ if host != "" { "--host " + host } else { "" } }}

# per agent: service, API port, jails, gateway, PF; non-zero when anything is down
[no-exit-message]
status *options:
    invoke status "$@"

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
