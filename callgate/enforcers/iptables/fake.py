"""An in-memory stand-in for ipset and iptables-restore/-save, for fast tests.

It understands the subset of the tools' languages that the iptables backend
speaks and enforces the kernel's rules that matter for callgate's own tests:
an ``iptables-restore`` file commits all of it or nothing (``--test`` commits
nothing), a rule may only reference existing chains and existing sets of the
table's family, a chain in use cannot be deleted, a set referenced by a rule
cannot be destroyed, and ``ipset restore`` stops at the first bad line (the
lines before it stay applied, as with the real tool).

It does NOT reorder options like iptables-save does; the backend emits them in
save order, which only the real-kernel tests can prove.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from callgate.errors import KernelError

BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
BUILTIN_TARGETS = ("ACCEPT", "DROP", "RETURN", "REJECT")


@dataclass
class FakeSet:
    type: str
    family: str
    maxelem: int = 65536
    elements: list[str] = field(default_factory=list)


@dataclass
class FakeIptables:
    sets: dict[str, FakeSet] = field(default_factory=dict)
    # version -> chain -> rules (the text after "-A CHAIN ")
    tables: dict[int, dict[str, list[str]]] = field(
        default_factory=lambda: {v: {c: [] for c in BUILTIN_CHAINS} for v in (4, 6)})
    calls: list[tuple[str, ...]] = field(default_factory=list)
    # Called with (argv, stdin) before each command; a returned string fails it.
    fail: Callable[[Sequence[str], str | None], str | None] | None = None

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        self.calls.append(tuple(argv))
        if self.fail is not None and (message := self.fail(argv, stdin)):
            raise KernelError(message)
        tool = argv[0]
        if tool == "ipset":
            if argv[1] == "save":
                return self._ipset_save()
            if argv[1] == "restore":
                self._ipset_restore(stdin or "")
                return ""
        version = 6 if tool.startswith("ip6tables") else 4
        if tool.endswith("-save"):
            return self._save(version)
        if tool.endswith("-restore"):
            self._restore(version, stdin or "", test="--test" in argv)
            return ""
        raise KernelError(f"fake: unsupported command {' '.join(argv)}")

    @property
    def writes(self) -> list[tuple[str, ...]]:
        """Calls that could change state (restores without --test)."""
        return [c for c in self.calls if (c[0] == "ipset" and c[1] == "restore")
                or (c[0].endswith("-restore") and "--test" not in c)]

    # -- ipset -------------------------------------------------------------

    def _ipset_save(self) -> str:
        lines = []
        for name, s in self.sets.items():
            lines.append(f"create {name} {s.type} family {s.family} hashsize 1024 maxelem {s.maxelem} "
                         "bucketsize 12 initval 0x12345678")
            lines += [f"add {name} {e}" for e in reversed(s.elements)]  # hash order, not ours
        return "\n".join(lines) + "\n"

    def _referenced(self, name: str) -> bool:
        return any(f"--match-set {name} " in r for t in self.tables.values() for rules in t.values() for r in rules)

    def _ipset_restore(self, text: str) -> None:
        for n, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if not words:
                continue
            verb, name = words[0], words[1]
            if verb == "create":
                if name in self.sets:
                    raise KernelError(f"ipset v7: Error in line {n}: Set cannot be created: set with the same name already exists")
                opts = dict(zip(words[3::2], words[4::2], strict=False))
                self.sets[name] = FakeSet(words[2], opts.get("family", "inet"), int(opts.get("maxelem", 65536)))
            elif verb == "add":
                s = self._set(name, n)
                if len(s.elements) >= s.maxelem:
                    raise KernelError(f"ipset v7: Error in line {n}: Hash is full")
                if "/0" in words[2]:
                    raise KernelError(f"ipset v7: Error in line {n}: The value of the CIDR parameter is out of range")
                s.elements.append(words[2])
            elif verb == "swap":
                a, b = self._set(name, n), self._set(words[2], n)
                if (a.type, a.family) != (b.type, b.family):
                    raise KernelError(f"ipset v7: Error in line {n}: The sets cannot be swapped")
                self.sets[name], self.sets[words[2]] = b, a
            elif verb == "destroy":
                self._set(name, n)
                if self._referenced(name):
                    raise KernelError(f"ipset v7: Error in line {n}: Set cannot be destroyed: it is in use")
                del self.sets[name]
            else:
                raise KernelError(f"ipset v7: Error in line {n}: unknown command {verb}")

    def _set(self, name: str, n: int) -> FakeSet:
        if name not in self.sets:
            raise KernelError(f"ipset v7: Error in line {n}: The set with the given name does not exist")
        return self.sets[name]

    # -- iptables ----------------------------------------------------------

    def _save(self, version: int) -> str:
        chains = self.tables[version]
        lines = ["# Generated by fake", "*filter"]
        lines += [f":{c} ACCEPT [0:0]" if c in BUILTIN_CHAINS else f":{c} - [0:0]" for c in chains]
        lines += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def _restore(self, version: int, text: str, test: bool) -> None:
        chains = copy.deepcopy(self.tables[version])
        family = "inet" if version == 4 else "inet6"
        for n, line in enumerate(text.splitlines(), 1):
            def bad(why: str, n: int = n) -> KernelError:
                return KernelError(f"iptables-restore: line {n} failed: {why}")

            if not line or line.startswith("#") or line == "*filter":
                continue
            if line == "COMMIT":
                if not test:
                    self.tables[version] = chains
                return
            if line.startswith(":"):
                name = line[1:].split()[0]
                chains[name] = []  # create, or flush (--noflush semantics for user chains)
                continue
            op, chain, *rest = line.split(" ", 2)
            if chain not in chains:
                raise bad(f"chain {chain} does not exist")
            rule = rest[0] if rest else ""
            if op == "-A" or op == "-I":
                if op == "-I":
                    pos, _, rule = rule.partition(" ")
                m = re.search(r"-[jg] (\S+)", rule)
                if m and m.group(1) not in BUILTIN_TARGETS and m.group(1) not in chains:
                    raise bad(f"target {m.group(1)} does not exist")
                for set_name in re.findall(r"--match-set (\S+)", rule):
                    s = self.sets.get(set_name)
                    if s is None or s.family != family:
                        raise bad(f"Set {set_name} doesn't exist")
                if op == "-A":
                    chains[chain].append(rule)
                else:
                    chains[chain].insert(int(pos) - 1, rule)
            elif op == "-D":
                if rule not in chains[chain]:
                    raise bad("Bad rule (does a matching rule exist in that chain?)")
                chains[chain].remove(rule)
            elif op == "-X":
                if chain in BUILTIN_CHAINS or chains[chain]:
                    raise bad(f"cannot delete chain {chain}: not empty or built in")
                if any(re.search(rf"-[jg] {re.escape(chain)}( |$)", r) for rules in chains.values() for r in rules):
                    raise bad(f"cannot delete chain {chain}: in use")
                del chains[chain]
            else:
                raise bad(f"unsupported {op}")
        raise KernelError("iptables-restore: no COMMIT line")
