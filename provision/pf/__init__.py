"""A PF evaluator: what a FreeBSD pf(4) ruleset does to a packet, computed, never sent.

`grammar` reads pf.conf(5) text (the subset warden renders and the rules operators
commonly write) into expanded rules, the way pfctl(8) would; anything it does not
understand is a `PfSyntaxError`, never skipped.  `engine` evaluates those rules against
packets at (interface, direction) hooks with pf's semantics: states first, translation
before filtering, last match unless `quick`, anchors at their position.  `topology`
walks a packet through a host (bridge members, the bridge, routing, NAT) and calls the
engine at every pfil hook the FreeBSD kernel would.  Nothing here touches a network.
"""

from .engine import Firewall, Packet, Verdict
from .grammar import PfSyntaxError, Ruleset, parse_ruleset

__all__ = ["Firewall", "Packet", "PfSyntaxError", "Ruleset", "Verdict", "parse_ruleset"]
