"""The policy model: inputs (NetworkPolicy, App, inventory) and the reference evaluator."""

from callgate.policy.evaluator import Decision, Evaluator
from callgate.policy.inventory import load_inventory
from callgate.policy.loader import load_policies
from callgate.policy.model import Endpoint, Inventory, Policy, PolicySet

__all__ = ["Decision", "Endpoint", "Evaluator", "Inventory", "Policy", "PolicySet", "load_inventory", "load_policies"]
