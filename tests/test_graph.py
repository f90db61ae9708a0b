"""`invoke graph`: the picture has one node per thing and one edge per connection."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from .conftest import REPO, TWO_HOSTS, Registry

SVG = "{http://www.w3.org/2000/svg}"


def test_graph_draws_hosts_agents_jails_vms_and_shared_jails_once(registry: Registry) -> None:
    registry.write_inventory(TWO_HOSTS)
    registry.write_env("atlas", "AGENT_NAME=atlas\nAGENT_SUBNET_BASE=10.0.1\nAGENT_HOST=fbsd1\nOLLAMA_JAIL_NAME=llm\n")
    registry.write_env(
        "iris",
        "AGENT_NAME=iris\nAGENT_SUBNET_BASE=10.0.2\nAGENT_HOST=fbsd1\nOLLAMA_JAIL_NAME=llm\n"
        "WARDEN_OLLAMA_IP=10.0.1.4\nCONTROLPLANE_API_PORT=3101\n",
    )
    registry.write_env(
        "nova",
        "AGENT_NAME=nova\nAGENT_SUBNET_BASE=10.1.0\nAGENT_HOST=fbsd2\nAGENT_PLACEMENT=bhyve\n"
        "WARDEN_VM_IP=10.255.0.10\n",
    )
    out = registry.root / "pic" / "fleet"
    env = {**os.environ, **registry.env()}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "graph", "--png", "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = ET.parse(out.with_suffix(".svg")).getroot()
    groups = [g for g in root.iter(f"{SVG}g")]
    nodes = [g.find(f"{SVG}title").text for g in groups if g.get("class") == "node"]  # type: ignore[union-attr]
    edges = [g for g in groups if g.get("class") == "edge"]
    clusters = [g for g in groups if g.get("class") == "cluster"]
    # 2 host bridges, 1 VM + its own bridge, 3 agents, 4 + 3 + 4 jails (the shared llm jail once)
    assert len(nodes) == 18
    assert nodes.count("fbsd1/jail/llm") == 1
    # 3 bridge→agent, 12 agent→jail (both agents point at llm), bridge→VM, VM→its bridge
    assert len(edges) == 17
    assert len(clusters) == 3  # fbsd1, fbsd2, the VM inside fbsd2
