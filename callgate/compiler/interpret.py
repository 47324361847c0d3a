"""Run the IR in Python, packet by packet.

This is the IR's executable specification: property tests check that it agrees
with the reference :class:`~callgate.policy.evaluator.Evaluator` on every
tuple, and the real-kernel tests check that each backend agrees with both.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable

from callgate.compiler import addresses
from callgate.compiler.ir import Chain, EndpointRules, Rule, RuleSet, Verdict


class _SetIndex:
    def __init__(self, elements: Iterable[str]) -> None:
        intervals = sorted(addresses.parse_element(e) for e in elements)
        self.starts = [lo for lo, _ in intervals]
        self.ends = [hi for _, hi in intervals]

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]


class Interpreter:
    """Evaluates connections against the RuleSets of one or more nodes."""

    def __init__(self, rulesets: Iterable[RuleSet]) -> None:
        self._sets: dict[str, _SetIndex] = {}
        self._pairs: dict[str, frozenset[tuple[int, int]]] = {}
        self._by_ip: dict[int, tuple[EndpointRules, str]] = {}
        for rs in rulesets:
            for s in rs.address_sets:
                self._sets[s.name] = _SetIndex(s.elements)
            for p in rs.port_sets:
                self._pairs[p.name] = frozenset((int(ipaddress.ip_address(a)), n) for a, n in p.elements)
            for ep in rs.endpoints:
                for ip in ep.ips:
                    self._by_ip[int(ipaddress.ip_address(ip))] = (ep, rs.node)

    @staticmethod
    def _rule_matches(rule: Rule, sets: dict[str, _SetIndex], pairs: dict[str, frozenset[tuple[int, int]]],
                      peer: int, version: int, port: int, protocol: str) -> bool:
        if rule.family is not None and rule.family != ("ip" if version == 4 else "ip6"):
            return False
        if rule.l4 is not None:
            if rule.l4.protocol != protocol:
                return False
            if rule.l4.ports and not any(r.first <= port <= r.last for r in rule.l4.ports):
                return False
        if rule.peer_set is not None and peer not in sets[rule.peer_set]:
            return False
        return rule.peer_port_set is None or (peer, port) in pairs[rule.peer_port_set]

    def run_tiers(self, tiers: tuple[Chain, ...], peer: int, version: int, port: int, protocol: str) -> Verdict:
        for chain in tiers:
            verdict = chain.default
            for rule in chain.rules:
                if self._rule_matches(rule, self._sets, self._pairs, peer, version, port, protocol):
                    verdict = rule.verdict
                    break
            if verdict is not Verdict.PASS:
                return verdict
        return Verdict.ALLOW

    def allowed(self, src: str, dst: str, port: int, protocol: str = "TCP") -> bool:
        src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        proto = protocol.lower()
        s, d = self._by_ip.get(int(src_ip)), self._by_ip.get(int(dst_ip))
        if s is not None and d is not None and s[0] is d[0]:
            return True  # a pod reaching itself never crosses its veth
        if s is not None and s[0].egress and self.run_tiers(
                s[0].egress, int(dst_ip), dst_ip.version, port, proto) is not Verdict.ALLOW:
            return False
        return not (d is not None and d[0].ingress and self.run_tiers(
            d[0].ingress, int(src_ip), src_ip.version, port, proto) is not Verdict.ALLOW)
