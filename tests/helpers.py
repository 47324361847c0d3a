"""Small helpers shared by tests: write YAML to temp files, load the examples."""

from __future__ import annotations

import textwrap
from pathlib import Path

from callgate.policy import Inventory, PolicySet, load_inventory, load_policies

ROOT = Path(__file__).resolve().parent.parent
STANDARD_INVENTORY = ROOT / "examples" / "standard" / "inventory.yaml"
SHOP = ROOT / "examples" / "shop"


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def standard() -> Inventory:
    return load_inventory(STANDARD_INVENTORY)


def policies_from(tmp: Path, text: str, name: str = "policies.yaml") -> PolicySet:
    return load_policies(write(tmp, name, text))
