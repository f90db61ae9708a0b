"""A picture of the fleet: hosts, bridges, agent /24s, jails and bhyve VMs.

The layout is Graphviz's (`dot`), not ours: we only say what is connected to what.
Shared LLM jails are one node with an edge from every agent that uses them, so the
picture shows sharing instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checks import placement_host
from .models import Agent, Host


def _id(*parts: str) -> str:
    return "/".join(parts)


def fleet_graph(hosts: Sequence[Host], agents: Sequence[Agent]) -> Any:
    """A graphviz.Digraph of the fleet."""
    import graphviz

    dot = graphviz.Digraph(
        "warden",
        graph_attr={"rankdir": "LR", "fontname": "Helvetica", "compound": "true"},
        node_attr={"fontname": "Helvetica", "fontsize": "10", "shape": "box", "style": "rounded"},
    )
    by_host: dict[str, list[Agent]] = {}
    for a in agents:
        by_host.setdefault(a.host, []).append(a)
    drawn_jails: set[str] = set()
    for host in sorted(hosts, key=lambda h: h.name):
        with dot.subgraph(name=f"cluster_{host.name}") as hg:
            hg.attr(label=f"host {host.name}", style="rounded", color="gray40")
            bridge = _id(host.name, host.bridge)
            hg.node(bridge, f"{host.bridge}\n(bridge)", shape="ellipse")
            for a in sorted(by_host.get(host.name, []), key=lambda a: a.name):
                if a.placement == "bhyve":
                    vm = _id(host.name, a.vm_name)
                    with hg.subgraph(name=f"cluster_{a.vm_name}") as vg:
                        vg.attr(label=f"bhyve VM {a.vm_name}", style="dashed")
                        vm_bridge = _id(a.vm_name, "warden0")
                        vg.node(vm, f"{a.vm_name}\nuplink {a.vm_ip}", shape="component")
                        vg.node(vm_bridge, "warden0\n(bridge)", shape="ellipse")
                        dot.edge(vm, vm_bridge)
                        _agent(vg, dot, a, vm_bridge, drawn_jails)
                    dot.edge(bridge, vm)
                else:
                    _agent(hg, dot, a, bridge, drawn_jails)
    return dot


def _agent(sub: Any, dot: Any, a: Agent, bridge: str, drawn: set[str]) -> None:
    where = placement_host(a)
    node = _id(where, "agent", a.name)
    sub.node(node, f"{a.name}\n{a.subnet}\ngw {a.gateway}", shape="box3d")
    dot.edge(bridge, node)
    for jail in a.jails:
        jid = _id(where, "jail", jail.name)
        if jid not in drawn:
            drawn.add(jid)
            sub.node(jid, f"{jail.name}\n{jail.ip}", shape="cylinder" if jail.role == "db" else "box")
        dot.edge(node, jid)


def write_graph(
    hosts: Sequence[Host], agents: Sequence[Agent], out: Path, formats: Sequence[str] = ("svg",)
) -> list[Path]:
    """Render the picture into OUT.<fmt> for each format; returns the files written."""
    dot = fleet_graph(hosts, agents)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = Path(dot.render(outfile=str(out.with_suffix(f".{fmt}")), format=fmt, cleanup=True))
        written.append(path)
    out.with_suffix(".gv").unlink(missing_ok=True)
    return written
