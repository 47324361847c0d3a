"""The semantic lint checks. Each takes the :class:`Linter` and reports findings.

Semantics follow the reference evaluator exactly (that is the point of these
checks over a generic YAML linter): ``{}`` selects everything, a peer without
namespaceSelector means the policy's own namespace, matchExpressions count,
named ports resolve on each destination pod, protocol defaults to TCP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from callgate.analysis.connectivity import Connectivity, Partition, ProtocolPortRange, family_ip
from callgate.analysis.lint import Item, Linter
from callgate.analysis.rules import Severity
from callgate.policy.model import Direction, Endpoint, Peer, Policy, PolicyRule, PolicySet
from callgate.policy.resolve import Resolver

_DIR_KEYS = {Direction.INGRESS: ("ingress", "from"), Direction.EGRESS: ("egress", "to")}


def run_all(linter: Linter) -> None:
    for item in linter.items:
        if item.kind == "NetworkPolicy":
            raw_network_policy(linter, item)
        else:
            raw_app(linter, item)
    compiled = [i for i in linter.items if i.policy is not None]
    done: set[tuple[int, Direction | None, int]] = set()
    if linter.inventory is not None:
        done = with_inventory(linter, compiled)
    syntactic_redundancy(linter, compiled, done)


# -- helpers -------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def rule_path(item: Item, direction: Direction, index: int) -> tuple[str | int, ...]:
    """Where compiled rule ``index`` is written in the document."""
    if item.kind == "NetworkPolicy":
        return ("spec", _DIR_KEYS[direction][0], index)
    if direction is Direction.INGRESS and index < len(item.caller_index):
        return ("spec", "callers", item.caller_index[index])
    return ("metadata", "name")  # an App's egress comes from other Apps' callers


def peer_path(item: Item, direction: Direction, index: int, peer: int) -> tuple[str | int, ...]:
    if item.kind == "NetworkPolicy":
        key, peers = _DIR_KEYS[direction]
        return ("spec", key, index, peers, peer)
    return rule_path(item, direction, index)


def selector_path(item: Item) -> tuple[str | int, ...]:
    return ("spec", "podSelector") if item.kind == "NetworkPolicy" else ("spec", "selector")


# -- checks on the written document ---------------------------------------------


def _ports(linter: Linter, item: Item, ports: Any, base: tuple[str | int, ...]) -> None:
    for j, port in enumerate(_list(ports)):
        port = _dict(port)
        if "protocol" not in port and ("port" in port or not port):
            what = f"port {port['port']}" if "port" in port else "this port entry"
            linter.report("CG109", f"{what} has no protocol, so it means TCP only", item, (*base, j),
                          hint="write `protocol: TCP` (or UDP/SCTP) explicitly")
        if "endPort" in port and port.get("endPort") == port.get("port"):
            linter.report("CG004", f"endPort {port['endPort']} equals port: a one-port range",
                          item, (*base, j, "endPort"), hint="remove endPort", severity=Severity.INFO)


def _broad(linter: Linter, item: Item, cidr: Any, path: tuple[str | int, ...]) -> None:
    if isinstance(cidr, str) and cidr.strip().endswith("/0"):
        linter.report("CG106", f"{cidr} matches every address, including all pods of the cluster",
                      item, path, hint="use the narrowest range meant, or disable broad-ipblock here if "
                      "'anywhere' is intended")


def raw_network_policy(linter: Linter, item: Item) -> None:
    spec = _dict(_dict(item.doc.data).get("spec"))
    types = spec.get("policyTypes")
    for direction, (key, peers_key) in _DIR_KEYS.items():
        rules = _list(spec.get(key))
        if types is not None and rules and direction.value not in _list(types):
            linter.report("CG105", f"{key} rules are present but policyTypes {types} does not list "
                          f"{direction.value}, so they are ignored", item, ("spec", key),
                          hint=f"add {direction.value} to policyTypes, or delete the {key} rules")
        for i, rule in enumerate(rules):
            rule = _dict(rule)
            _ports(linter, item, rule.get("ports"), ("spec", key, i, "ports"))
            for j, peer in enumerate(_list(rule.get(peers_key))):
                block = _dict(_dict(peer).get("ipBlock"))
                _broad(linter, item, block.get("cidr"), ("spec", key, i, peers_key, j, "ipBlock", "cidr"))


def raw_app(linter: Linter, item: Item) -> None:
    spec = _dict(_dict(item.doc.data).get("spec"))
    for i, caller in enumerate(_list(spec.get("callers"))):
        _broad(linter, item, _dict(caller).get("cidr"), ("spec", "callers", i, "cidr"))
    for i, dest in enumerate(_list(spec.get("egress"))):
        dest = _dict(dest)
        _broad(linter, item, dest.get("cidr"), ("spec", "egress", i, "cidr"))
        _ports(linter, item, dest.get("ports"), ("spec", "egress", i, "ports"))


# -- redundancy without an inventory ---------------------------------------------


def subsumes(a: PolicyRule, b: PolicyRule) -> bool:
    """Does rule ``a`` allow everything rule ``b`` allows (syntactically)?"""
    peers = not a.peers or (bool(b.peers) and set(b.peers) <= set(a.peers))
    ports = not a.ports or (bool(b.ports) and set(b.ports) <= set(a.ports))
    return peers and ports


def syntactic_redundancy(linter: Linter, items: list[Item], done: set[tuple[int, Direction | None, int]]) -> None:
    """Rules subsumed by another rule of the same policy, or of a policy in the same
    namespace with the same podSelector (which applies to exactly the same pods)."""
    groups: dict[tuple[str, Any], list[Item]] = {}
    for item in items:
        assert item.policy is not None
        groups.setdefault((item.policy.namespace, item.policy.pod_selector), []).append(item)
    for item in items:
        pol = item.policy
        assert pol is not None
        if (id(item), None, 0) in done:
            continue  # the whole policy changes nothing; reported once
        for direction in pol.policy_types:
            mine = pol.rules(direction)
            for i, rule in enumerate(mine):
                if (id(item), direction, i) in done:
                    continue
                why = _covering(groups[(pol.namespace, pol.pod_selector)], item, direction, i, rule)
                if why is not None:
                    linter.report("CG107", f"{direction.value.lower()} rule {i} allows nothing that {why} "
                                  "does not already allow", item, rule_path(item, direction, i),
                                  hint="delete it, or change it to say what was meant")


def _covering(group: list[Item], me: Item, direction: Direction, index: int, rule: PolicyRule) -> str | None:
    for other in group:
        pol = other.policy
        assert pol is not None
        if direction not in pol.policy_types:
            continue
        for j, cand in enumerate(pol.rules(direction)):
            if other is me and j == index:
                continue
            if not subsumes(cand, rule):
                continue
            equal = subsumes(rule, cand)
            # Of two equal rules, report only the later one (in file order).
            if equal and ((other is me and j > index) or (other is not me and _order(other) > _order(me))):
                continue
            return f"rule {j}" if other is me else f"{pol.display} {direction.value.lower()}[{j}]"
    return None


def _order(item: Item) -> tuple[str, int, tuple[str | int, ...]]:
    return (item.doc.file, item.doc.index, tuple(str(p) for p in item.doc.path))


# -- checks that need an inventory ---------------------------------------------


def with_inventory(linter: Linter, items: list[Item]) -> set[tuple[int, Direction | None, int]]:
    """Selector, named-port, default-deny and exact redundancy checks. Returns what was
    reported as redundant: (id(item), None, 0) for a whole policy, (id(item), direction,
    rule index) for a rule, so the syntactic check does not report it again."""
    inv = linter.inventory
    assert inv is not None
    resolver = Resolver(inv)
    for item in items:
        pol = item.policy
        assert pol is not None
        targets = resolver.targets(pol)
        if not targets:
            where = ("namespace " + pol.namespace + " has no pods in the inventory"
                     if not any(e.namespace == pol.namespace for e in inv.endpoints)
                     else "no pod of namespace " + pol.namespace + " matches " + pol.pod_selector.canonical())
            linter.report("CG101", f"the selector selects no pod: {where}", item, selector_path(item),
                          hint=_elsewhere(resolver, pol))
        if item.kind == "NetworkPolicy":
            _peer_checks(linter, resolver, item)
            _named_ports(linter, resolver, item, targets)
    _default_deny(linter, resolver, items)
    return _exact_redundancy(linter, items)


def _elsewhere(resolver: Resolver, pol: Policy) -> str:
    found = sorted({e.namespace for e in resolver.inventory.endpoints
                    if e.namespace != pol.namespace and pol.pod_selector.matches(e.labels)})
    if found:
        return f"matching pods exist in namespace(s) {', '.join(found)}: a policy only selects pods of its own namespace"
    return "check the label keys and values against the inventory's pods"


def _iter_peers(pol: Policy) -> Iterator[tuple[Direction, int, int, Peer]]:
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for i, rule in enumerate(pol.rules(direction)):
            for j, peer in enumerate(rule.peers):
                yield direction, i, j, peer


def _peer_checks(linter: Linter, resolver: Resolver, item: Item) -> None:
    pol = item.policy
    assert pol is not None
    inv = resolver.inventory
    for direction, i, j, peer in _iter_peers(pol):
        if peer.ip_block is not None:
            continue
        path = peer_path(item, direction, i, j)
        if peer.namespace_selector is not None and not resolver.namespaces(peer.namespace_selector):
            labels = "; ".join(f"{n}: {','.join(f'{k}={v}' for k, v in sorted(ns.labels.items()))}"
                               for n, ns in sorted(inv.namespaces.items())[:5])
            linter.report("CG103", f"namespaceSelector {peer.namespace_selector.canonical()} matches no namespace",
                          item, (*path, "namespaceSelector"),
                          hint=f"namespaces are selected by *their* labels ({labels}); "
                          "kubernetes.io/metadata.name=<name> names one reliably")
            continue
        if resolver.peer_endpoints(peer):
            continue
        sel = peer.pod_selector
        if peer.namespace_selector is None:
            others = sorted({e.namespace for e in inv.endpoints
                             if e.namespace != pol.namespace and (sel is None or sel.matches(e.labels))})
            hint = (f"a podSelector without namespaceSelector selects pods of {pol.namespace} only; matching "
                    f"pods exist in {', '.join(others)}: add a namespaceSelector" if others
                    else "check the label keys and values against the inventory's pods")
            msg = f"podSelector {sel.canonical() if sel else '{}'} selects no pod in the policy's namespace {pol.namespace}"
        else:
            spaces = ", ".join(sorted(resolver.namespaces(peer.namespace_selector)))
            msg = f"no pod matching {sel.canonical() if sel else '{}'} runs in the selected namespaces ({spaces})"
            hint = "check the podSelector against the pods of those namespaces"
        linter.report("CG102", msg, item, path, hint=hint)


def _named_ports(linter: Linter, resolver: Resolver, item: Item, targets: tuple[Endpoint, ...]) -> None:
    pol = item.policy
    assert pol is not None
    inv = resolver.inventory
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for i, rule in enumerate(pol.rules(direction)):
            named = [(k, s) for k, s in enumerate(rule.ports) if isinstance(s.port, str)]
            if not named:
                continue
            if direction is Direction.INGRESS:
                dests: list[Endpoint] = list(targets)
                whose = "pods this policy selects"
            elif not rule.peers:
                dests, whose = list(inv.endpoints), "pods"
            else:
                seen: dict[str, Endpoint] = {}
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        block = peer.ip_block
                        seen.update((e.key, e) for e in inv.endpoints if any(block.contains(ip) for ip in e.ips))
                    else:
                        seen.update((e.key, e) for e in resolver.peer_endpoints(peer))
                dests, whose = list(seen.values()), "destination pods"
            if not dests:
                continue  # reported as selects-nothing
            for k, spec in named:
                if any(e.resolve_port(spec.port, spec.protocol) for e in dests):  # type: ignore[arg-type]
                    continue
                other = sorted({p.protocol for e in dests for p in e.ports if p.name == spec.port})
                hint = (f"the {whose} declare {spec.port!r} as {'/'.join(other)}: set protocol: {other[0]}"
                        if other else f"declare a container port named {spec.port!r} on the {whose}, or fix the name")
                linter.report("CG104", f"named port {spec.port}/{spec.protocol} is declared by none of the "
                              f"{len(dests)} {whose}", item, (*rule_path(item, direction, i), "ports", k),
                              hint=hint)


def _default_deny(linter: Linter, resolver: Resolver, items: list[Item]) -> None:
    inv = resolver.inventory
    by_ns: dict[str, list[Policy]] = {}
    for item in items:
        assert item.policy is not None
        by_ns.setdefault(item.policy.namespace, []).append(item.policy)
    # One pass over the endpoints, not one per namespace (400 x 10,000 at bench size).
    eps_by_ns: dict[str, list[Endpoint]] = {}
    for e in inv.endpoints:
        eps_by_ns.setdefault(e.namespace, []).append(e)
    where: _NamespacePositions | None = None
    for ns in sorted(eps_by_ns):
        pols = [p for p in by_ns.get(ns, []) if Direction.INGRESS in p.policy_types]
        if any(p.pod_selector.is_empty for p in pols):
            continue
        open_eps = [e.key for e in eps_by_ns[ns] if not any(p.pod_selector.matches(e.labels) for p in pols)]
        if not open_eps:
            continue
        if where is None:
            where = _NamespacePositions(linter)
        file, line, column = where.find(ns)
        shown = ", ".join(open_eps[:5]) + (f" and {len(open_eps) - 5} more" if len(open_eps) > 5 else "")
        linter.report("CG110", f"namespace {ns} has no default-deny policy; {len(open_eps)} pod(s) accept "
                      f"traffic from anywhere: {shown}", file=file, line=line, column=column,
                      obj=f"Namespace {ns}",
                      hint="add a NetworkPolicy with podSelector: {} and policyTypes: [Ingress] in " + ns)


class _NamespacePositions:
    """Where each namespace is declared in the inventory files, if anywhere.

    The files are read once for all namespaces (reading them per namespace was
    35 s of a 44 s lint at 400 namespaces). Same answers as a scan per namespace
    that stops at the first declaration: files and documents in order, the first
    declaration wins; a file that cannot be read ends the scan, and namespaces not
    found before it get no position at all (the per-namespace scan would have
    failed on that file too)."""

    def __init__(self, linter: Linter) -> None:
        from callgate.policy.documents import files_under, read_documents

        self.linter = linter
        self.first_file: str | None = None
        self.failed = False
        self.found: dict[str, tuple[Any, tuple[str | int, ...]]] = {}  # ns -> (document, path)
        self.marks: dict[tuple[str, int], dict[tuple[str | int, ...], tuple[int | None, int | None]]] = {}
        try:
            files = files_under(linter.inventory_paths)
            self.first_file = str(files[0]) if files else None
            for path in files:
                for doc in read_documents(path):
                    data = _dict(doc.data)
                    if data.get("kind") == "Inventory":
                        for ns in _dict(data.get("namespaces")):
                            if isinstance(ns, str):
                                self.found.setdefault(ns, (doc, (*doc.path, "namespaces", ns)))
                    if data.get("kind") == "Namespace":
                        name = _dict(data.get("metadata")).get("name")
                        if isinstance(name, str):
                            self.found.setdefault(name, (doc, doc.path))
        except Exception:
            self.failed = True

    def find(self, ns: str) -> tuple[str | None, int | None, int | None]:
        hit = self.found.get(ns)
        if hit is None:
            return (None, None, None) if self.failed else (self.first_file, None, None)
        doc, path = hit
        where = (doc.file, doc.index)
        if where not in self.marks:
            # Every namespace declared in that document at once: one pass over the file.
            paths = [p for d, p in self.found.values() if (d.file, d.index) == where]
            try:
                self.marks[where] = self.linter.positions.many(doc.file, doc.index, paths)
            except Exception:
                self.marks[where] = {}
        line_col = self.marks[where].get(path)
        if line_col is None:
            return None, None, None
        return doc.file, line_col[0], line_col[1]


def _exact_redundancy(linter: Linter, items: list[Item]) -> set[tuple[int, Direction | None, int]]:
    """CG108 (policy changes nothing) and CG107 (rule redundant) over the inventory.

    Uses endpoint classes and port segments (connectivity.py), per IP family. Rules
    with ipBlock peers or no peers also reach addresses outside the inventory, so
    they are never called redundant here (the syntactic check still looks at them)."""
    inv = linter.inventory
    assert inv is not None
    policies = PolicySet([i.policy for i in items if i.policy is not None])
    families = []
    for family in (4, 6):
        if any(family_ip(e, family) for e in inv.endpoints):
            part = Partition(inv, [policies], family)
            families.append(_redundancy(Connectivity(part, policies)))
    done: set[tuple[int, Direction | None, int]] = set()
    for item in items:
        pol = item.policy
        assert pol is not None
        if not any(id(pol) in f.selected for f in families):
            continue  # selects nothing: CG101
        if not any(pol.rules(d) for d in pol.policy_types):
            continue  # a pure deny policy: belt and braces by design, even when others isolate too
        if all(f.noop(pol) for f in families):
            done.add((id(item), None, 0))
            linter.report("CG108", "removing this policy would not change any verdict over the inventory",
                          item, ("metadata", "name"),
                          hint="its pods are isolated and its rules allowed by other policies already, or it "
                          "allows everything it isolates; delete it or fix what it was meant to say")
            continue
        for direction in pol.policy_types:
            for i, rule in enumerate(pol.rules(direction)):
                if not rule.peers or any(p.ip_block is not None for p in rule.peers):
                    continue
                if all(f.rule_redundant(pol, direction, i) for f in families):
                    done.add((id(item), direction, i))
                    linter.report("CG107", f"{direction.value.lower()} rule {i} allows nothing over the inventory "
                                  "that other rules do not already allow to the same pods", item,
                                  rule_path(item, direction, i), hint="delete it, or change it to say what was meant")
    return done


RuleKey = tuple[int, Direction, int]  # (id(policy), direction, rule index)


@dataclass
class _FamilyRedundancy:
    """What one IP family says about each policy and rule (policies by ``id``).

    A policy changes nothing in a family when it selects some class there and, at
    every class it selects and for each of its directions, either no other policy
    isolates the class and one of its rules allows everything, or (reaching no
    address outside the inventory) on every port segment its rules allow only peer
    classes that the other isolating policies allow too. A rule is redundant when it
    allows something at some (class, segment) and, wherever it does, the other rules
    of the isolating policies allow it too."""

    selected: set[int] = dc_field(default_factory=set)
    changes: set[int] = dc_field(default_factory=set)  # policies that change some verdict
    allows: set[RuleKey] = dc_field(default_factory=set)
    uncovered: set[RuleKey] = dc_field(default_factory=set)

    def noop(self, pol: Policy) -> bool:
        return id(pol) in self.selected and id(pol) not in self.changes

    def rule_redundant(self, pol: Policy, direction: Direction, index: int) -> bool:
        key = (id(pol), direction, index)
        return key in self.allows and key not in self.uncovered


def _redundancy(conn: Connectivity) -> _FamilyRedundancy:
    """Class by class rather than policy by policy: at a class isolated by k policies,
    each policy's "what do the others allow" is a prefix/suffix OR, so a class costs
    O(rules) bit operations per segment instead of O(k x rules) for each of the k
    policies (the 100 policies on the bench's hot pod made that quadratic)."""
    out = _FamilyRedundancy()
    segments = conn.partition.segments()
    for c in range(conn.partition.size):
        for direction in (Direction.INGRESS, Direction.EGRESS):
            iso = conn.isolating(c, direction)
            if not iso:
                continue
            out.selected.update(id(p) for p in iso)
            if len(iso) == 1:
                if not any(_allows_all(r) for r in iso[0].rules(direction)):
                    out.changes.add(id(iso[0]))
            else:
                for p in iso:
                    if any(not r.peers or any(q.ip_block is not None for q in r.peers) for r in p.rules(direction)):
                        out.changes.add(id(p))  # reaches addresses outside the inventory
            # Rules whose verdict is still open: they allow peers by selector only.
            checked = [[(id(p), direction, i) if r.peers and all(q.ip_block is None for q in r.peers)
                        and (id(p), direction, i) not in out.uncovered else None
                        for i, r in enumerate(p.rules(direction))] for p in iso]
            open_policies = len(iso) > 1 and any(id(p) not in out.changes for p in iso)
            if not open_policies and not any(k is not None for row in checked for k in row):
                continue
            for seg in segments:
                _segment(conn, out, iso, checked, direction, c, seg)
    return out


def _segment(conn: Connectivity, out: _FamilyRedundancy, iso: list[Policy], checked: list[list[RuleKey | None]],
             direction: Direction, c: int, seg: ProtocolPortRange) -> None:
    rows = [[conn.rule_bits(p, direction, i, c, seg.protocol, seg.lo) for i in range(len(p.rules(direction)))]
            for p in iso]
    per_policy = [_or(row) for row in rows]
    before, after = _exclusive_ors(per_policy)
    for k, p in enumerate(iso):
        others = before[k] | after[k]
        if len(iso) > 1 and per_policy[k] & ~others:
            out.changes.add(id(p))
        row = rows[k]
        if not any(key is not None for key in checked[k]):
            continue
        rb, ra = _exclusive_ors(row)
        for i, key in enumerate(checked[k]):
            mine = row[i]
            if key is None or not mine:
                continue
            out.allows.add(key)
            if mine & ~(others | rb[i] | ra[i]):
                out.uncovered.add(key)


def _or(values: list[int]) -> int:
    bits = 0
    for v in values:
        bits |= v
    return bits


def _exclusive_ors(values: list[int]) -> tuple[list[int], list[int]]:
    """For each position, the OR of the values before it and the OR of those after it."""
    n = len(values)
    before, after = [0] * n, [0] * n
    acc = 0
    for i in range(n):
        before[i] = acc
        acc |= values[i]
    acc = 0
    for i in range(n - 1, -1, -1):
        after[i] = acc
        acc |= values[i]
    return before, after


def _allows_all(rule: PolicyRule) -> bool:
    return not rule.peers and not rule.ports
