"""callgate: network-policy enforcement for container platforms.

Data flows one way: ``watchers`` (sources) → ``policy`` (model, evaluator) →
``compiler`` (per-node RuleSet IR) → ``enforcers`` (kernel backends).
"""

__version__ = "0.1.0"
