"""The lint rules: ids, default severities and the documentation behind ``lint --explain``.

docs/lint-rules.md is generated from this table (``callgate lint --explain all
--format markdown``), and a test keeps the two in step, so a rule's
documentation lives in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Severity(IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}: use error, warning or info") from None


@dataclass(frozen=True)
class LintRule:
    id: str
    name: str
    severity: Severity
    needs_inventory: bool
    summary: str
    explanation: str
    bad: str
    good: str


def _r(id_: str, name: str, severity: Severity, inventory: bool, summary: str, explanation: str,
       bad: str, good: str) -> LintRule:
    return LintRule(id_, name, severity, inventory, summary, explanation.strip(), bad.strip("\n"), good.strip("\n"))


E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO  # noqa: E741 - short names keep the table readable

RULES: tuple[LintRule, ...] = (
    _r("CG001", "invalid-object", E, False,
       "The document is not a valid NetworkPolicy, callgate/v1 App or ClusterNetworkPolicy (the API server "
       "would reject it).",
       """
Schema and API-server validation: unknown fields, wrong types, bad label keys or
values, invalid CIDRs, an ipBlock combined with selectors, a caller port the App
does not serve, unreadable YAML. callgate refuses to apply such a file, so lint
reports it as an error with the exact field.""",
       """
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0}      # not a CIDR""",
       """
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8}"""),
    _r("CG002", "unknown-kind", E, False,
       "A document that is neither a policy callgate reads nor an inventory object.",
       """
Policy paths may hold NetworkPolicy (networking.k8s.io/v1), callgate/v1 App,
ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2), AdminNetworkPolicy and
BaselineAdminNetworkPolicy (v1alpha1), and inventory objects (callgate/v1
Inventory, v1 Pod, v1 Namespace, v1 Node). Anything else is most likely a typo in
apiVersion or kind, and would be refused by `apply`.""",
       "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy",
       "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy"),
    _r("CG003", "duplicate-name", E, False,
       "Two objects of the same kind share namespace and name.",
       """
The API server keeps one object per kind, namespace and name; the second
`kubectl apply` silently replaces the first. callgate refuses the set. Rename one
of them, or merge their rules.""",
       "metadata: {name: web, namespace: x}   # in a.yaml\nmetadata: {name: web, namespace: x}   # in b.yaml",
       "metadata: {name: web-ingress, namespace: x}\nmetadata: {name: web-egress, namespace: x}"),
    _r("CG004", "endport-misuse", E, False,
       "endPort without a numeric port or below port (an error), or equal to port (info).",
       """
endPort turns `port` into a range `port..endPort`. It needs a numeric `port`
(not a named port, not missing) and must not be below `port`: the API server
refuses both, and so does callgate (error). Equal to `port` it is valid, a
one-port range that only adds noise: reported as info.""",
       "ports:\n- {port: http, endPort: 8090}\n- {port: 8080, endPort: 8080, protocol: TCP}   # info",
       "ports:\n- {port: 8080, endPort: 8090, protocol: TCP}"),
    _r("CG005", "unknown-caller", E, False,
       "An App's caller names an App that is not defined.",
       """
A `callers` entry `{app: NAME, namespace: NS}` opens a path from another App.
When no App NS/NAME exists (namespace defaults to the callee's), the path opens
nothing and callgate refuses the set. Check the name, the namespace, or add the
App.""",
       "callers:\n- {app: cartt}",
       "callers:\n- {app: cart}"),
    _r("CG101", "selects-nothing", W, True,
       "A policy's podSelector (or an App's selector) selects no pod of the inventory.",
       """
A policy that selects no pod isolates nothing and allows nothing. Usually the
selector has a typo, uses the wrong label key, or the policy is in the wrong
namespace (a podSelector only looks at pods of the policy's own namespace). The
check evaluates matchLabels and matchExpressions exactly as Kubernetes does; `{}`
selects every pod of the namespace.""",
       "metadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: wbe}}",
       "metadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}"),
    _r("CG102", "peer-selects-nothing", W, True,
       "A from/to peer selects no pod of the inventory.",
       """
The peer matches nobody, so the rule allows nothing from (or to) pods. The classic
cause: a `podSelector` without a `namespaceSelector` means pods of the *policy's
own namespace*; to select pods elsewhere, add a namespaceSelector (the finding
says where matching pods do exist).""",
       "# policy in namespace x; the frontend pods live in y\n- from:\n  - podSelector: {matchLabels: {app: frontend}}",
       "- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
       "    podSelector: {matchLabels: {app: frontend}}"),
    _r("CG103", "namespace-selector-matches-nothing", W, True,
       "A namespaceSelector matches no namespace of the inventory.",
       """
Namespace labels are not pod labels: `namespaceSelector: {matchLabels: {app: x}}`
looks at the labels of Namespace objects. Every namespace carries
`kubernetes.io/metadata.name: <name>`, which is the reliable way to name one.
`namespaceSelector: {}` matches all namespaces.""",
       "- namespaceSelector: {matchLabels: {name: y}}",
       "- namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}"),
    _r("CG104", "unresolved-named-port", W, True,
       "A named port that no destination pod declares (with that protocol).",
       """
A named port resolves on each *destination* pod separately: for ingress rules
against the pods the policy selects, for egress rules against the pods the
peers select. When none of them declares a container port with that name and
protocol, the port matches nothing. A common slip: the port is declared as UDP
but the rule leaves protocol out (TCP).""",
       "ports:\n- {port: metrics}          # pods declare 'metrics' as UDP",
       "ports:\n- {port: metrics, protocol: UDP}"),
    _r("CG105", "rules-outside-policy-types", W, False,
       "ingress (egress) rules are present but policyTypes does not list Ingress (Egress).",
       """
When policyTypes is given, only the listed directions are enforced: rules of a
direction that is not listed are ignored entirely — the author almost certainly
meant otherwise. Add the direction to policyTypes, or delete the rules.""",
       "policyTypes: [Egress]\ningress:\n- from: [{podSelector: {}}]",
       "policyTypes: [Ingress, Egress]\ningress:\n- from: [{podSelector: {}}]"),
    _r("CG106", "broad-ipblock", W, False,
       "An ipBlock (or App cidr) of 0.0.0.0/0 or ::/0 that opens everything.",
       """
`0.0.0.0/0` and `::/0` match every address, pods of the cluster included
(ipBlocks are not restricted to external traffic). Usually a narrower range is
meant; if "anywhere" really is meant, say so with an inline
`# callgate: disable=broad-ipblock`. Note that a /0 of one family leaves the other
family closed.""",
       "- ipBlock: {cidr: 0.0.0.0/0}",
       "- ipBlock: {cidr: 203.0.113.0/24}"),
    _r("CG107", "redundant-rule", I, False,
       "A rule that allows nothing another rule does not already allow.",
       """
Without an inventory: the rule is duplicated, or another rule of the same policy
(or of a policy with the same podSelector) allows a superset of its peers and
ports. With an inventory: for every pod the policy selects, every peer and port
it allows is allowed by some other rule too (rules with ipBlocks are only
compared syntactically, since addresses outside the inventory count). Deleting
the rule changes nothing — or it was meant to say something else.""",
       "ingress:\n- from: [{podSelector: {}}]\n- from: [{podSelector: {matchLabels: {app: a}}}]",
       "ingress:\n- from: [{podSelector: {}}]"),
    _r("CG108", "policy-changes-nothing", I, True,
       "Removing the policy would not change any verdict over the inventory.",
       """
Every pod it selects is isolated by other policies for the same directions and
every rule it has is redundant, or it isolates and then allows everything
(e.g. `ingress: [{}]` with no other policy). Such a policy is dead weight — or it
is not doing what its author meant.""",
       "policyTypes: [Ingress]\ningress:\n- {}                    # allows everything",
       "policyTypes: [Ingress]\ningress:\n- from: [{podSelector: {matchLabels: {app: a}}}]"),
    _r("CG109", "port-without-protocol", I, False,
       "A port without a protocol: Kubernetes uses TCP.",
       """
`protocol` defaults to TCP. For DNS (53) and other UDP services this is the
classic mistake; write the protocol out so the reader does not have to know
the default.""",
       "ports:\n- {port: 53}",
       "ports:\n- {port: 53, protocol: UDP}\n- {port: 53, protocol: TCP}"),
    _r("CG110", "missing-default-deny", W, True,
       "A namespace with workloads has no default-deny policy and some of its pods are not isolated.",
       """
Without a `podSelector: {}` policy for Ingress, every pod that no other policy
happens to select accepts traffic from anywhere, including new pods nobody has
written a policy for yet. Add a default-deny:
`{podSelector: {}, policyTypes: [Ingress]}` (and Egress if wanted).""",
       "# namespace x: only a policy for app=web; app=db accepts anything",
       "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: x}\n"
       "spec: {podSelector: {}, policyTypes: [Ingress]}"),
    _r("CG111", "app-without-callers", W, False,
       "An App serves ports but lists no callers, so nothing may call it.",
       """
Every App is isolated in both directions, and only its `callers` open a way in.
An App that declares the ports it serves but no caller can be reached on none of
them: usually the callers were forgotten (or written on the calling App, where
they mean nothing). An App that is called by nobody on purpose (a batch job, a
client) need not list ports; or say so with `# callgate: disable=CG111`.""",
       "kind: App\nspec:\n  selector: {matchLabels: {app: ledger}}\n  ports: [{name: grpc, port: 9090}]",
       "kind: App\nspec:\n  selector: {matchLabels: {app: ledger}}\n  ports: [{name: grpc, port: 9090}]\n"
       "  callers: [{app: cart, ports: [grpc]}]"),
    # ClusterNetworkPolicy tiers (Admin, Baseline) around NetworkPolicy.
    _r("CG112", "same-priority-overlap", W, True,
       "Two cluster policies of one tier at one priority decide one connection differently.",
       """
Within a tier, a lower priority number goes first; for two policies at the same
priority the API leaves the order to the implementation ("there is no way for
the user to reliably determine which one it will choose"). callgate orders them
by kind and name, but another implementation may not. Reported when, over the
inventory, the two subjects share a pod and, for some peer and port, the first
matching rules of the two policies act differently (Accept, Deny, Pass). Give
them different priorities.""",
       "# two Admin policies, both priority 10, both selecting namespace x:\n"
       "# one Denies from namespace y, the other Accepts from pods of y",
       "# the same with priorities 10 and 11: the order is part of the policy"),
    _r("CG113", "shadowed-cluster-rule", W, False,
       "A cluster policy rule that can never match: an earlier catch-all in the same tier takes all its traffic.",
       """
Rules are tried in order: by priority, then as written. A rule that matches every
peer (every pod for ingress, `networks: [0.0.0.0/0, ::/0]` for egress, or a peer
callgate cannot resolve in a Deny or Pass rule, which fails closed as "deny all")
on all of a later rule's ports leaves nothing for the later rule, in the same
policy or in a later policy of the same tier whose subject it covers (the same
subject, or an earlier policy selecting every pod). The later rule is dead, or
the order is wrong.""",
       "egress:\n- {action: Deny, to: [{networks: [0.0.0.0/0, '::/0']}]}\n"
       "- {action: Accept, to: [{namespaces: {}}]}      # never reached",
       "egress:\n- {action: Accept, to: [{namespaces: {}}]}\n"
       "- {action: Deny, to: [{networks: [0.0.0.0/0, '::/0']}]}"),
    _r("CG114", "networks-cover-pods", W, False,
       "A cluster policy's `networks` peer also holds pod addresses.",
       """
`networks` is meant for destinations outside the cluster, but it matches any
address: an Accept or Deny of `0.0.0.0/0` accepts or denies pod-to-pod traffic
as well. If pods are not meant, put a rule that passes (or otherwise decides)
pod traffic before it. With an inventory, the pods inside the CIDRs are counted;
without one, `/0` networks are reported.""",
       "egress:\n- {action: Deny, to: [{networks: [0.0.0.0/0]}]}   # also denies every pod",
       "egress:\n- {action: Pass, to: [{namespaces: {}}]}\n- {action: Deny, to: [{networks: [0.0.0.0/0]}]}"),
    _r("CG115", "baseline-pass", W, False,
       "A Pass rule in the Baseline tier: after the Baseline there is only the default, which allows.",
       """
Pass skips the rest of the tier and hands the connection to the next tier. For
the Baseline tier, the next is the cluster default: allow. So a Baseline Pass is
an Accept that stops later Baseline rules from applying, which is rarely what
was meant. Write Accept if that is the intent, or Deny.""",
       "tier: Baseline\negress:\n- {action: Pass, to: [{namespaces: {}}]}",
       "tier: Baseline\negress:\n- {action: Accept, to: [{namespaces: {}}]}"),
    _r("CG116", "unresolvable-peer", W, False,
       "A cluster policy peer callgate cannot enforce (domainNames, or a peer kind it does not know) fails closed.",
       """
callgate filters packets by address in the kernel and cannot resolve domain
names there; a peer whose only field callgate does not know (from a newer CRD)
cannot be matched either. The API says such peers fail closed: an Accept rule
matches nothing through them, and a Deny or Pass rule becomes "deny all" (every
peer, on the rule's ports). Use `networks` with the addresses meant.""",
       "egress:\n- {action: Accept, to: [{domainNames: [api.example.com]}]}",
       "egress:\n- {action: Accept, to: [{networks: [203.0.113.10/32]}]}"),
    _r("CG117", "bad-enforcement-mode", E, True,
       "A namespace's callgate.io/enforcement label or annotation is neither enforce nor audit.",
       """
`callgate.io/enforcement: audit` on a Namespace (label, or annotation from
Kubernetes) puts its pods' isolation in audit: what it would deny is recorded as
`would-deny` in the flow log and let through. Any other value than `audit` or
`enforce` is most likely a typo of one of them, and callgate treats it as
`enforce`: the namespace is enforced although its author wanted to watch first.""",
       "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {callgate.io/enforcement: dry-run}",
       "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {callgate.io/enforcement: audit}"),
    _r("CG118", "audit-namespace", I, True,
       "A namespace is in audit: its policies are evaluated and logged, not enforced.",
       """
Its pods' isolation is evaluated and what it would deny is recorded as
`would-deny` (`callgate flows --verdict would-deny`), but every packet passes.
Useful to roll policies out without breaking production; remove the label (or
set it to `enforce`) once the flow log shows only what you meant to deny.""",
       "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {callgate.io/enforcement: audit}",
       "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop"),
)

BY_ID = {r.id: r for r in RULES}
BY_NAME = {r.name: r for r in RULES}


def lookup(ref: str) -> LintRule | None:
    """A rule by id (CG104, case-insensitive) or name (unresolved-named-port)."""
    ref = ref.strip()
    return BY_ID.get(ref.upper()) or BY_NAME.get(ref.lower())


def rule_markdown(rule: LintRule) -> str:
    needs = "needs `--inventory`" if rule.needs_inventory else "works without an inventory"
    return (
        f"## {rule.id} `{rule.name}` ({rule.severity.label})\n\n{rule.summary} ({needs})\n\n"
        f"{rule.explanation}\n\nReported:\n\n```yaml\n{rule.bad}\n```\n\nFine:\n\n```yaml\n{rule.good}\n```\n"
    )


def rules_markdown() -> str:
    head = (
        "# callgate lint rules\n\n"
        "Generated from `callgate/analysis/lint/rules.py` (`callgate lint --explain all`). Disable a rule by id or\n"
        "name: `[tool.callgate.lint] disable = [\"CG109\"]` in pyproject.toml, `lint: {disable: [CG109]}` in\n"
        "`.callgate.yaml`, the annotation `callgate.io/lint-disable: \"CG109,broad-ipblock\"` on an object, or a\n"
        "YAML comment `# callgate: disable=CG109` on the line of the finding or the line above it\n"
        "(`# callgate: disable-file=CG109` anywhere in a file for the whole file).\n\n"
        "| id | name | severity | needs inventory | what |\n|---|---|---|---|---|\n"
    )
    table = "".join(
        f"| {r.id} | `{r.name}` | {r.severity.label} | {'yes' if r.needs_inventory else 'no'} | {r.summary} |\n"
        for r in RULES)
    return head + table + "\n" + "\n".join(rule_markdown(r) for r in RULES)
