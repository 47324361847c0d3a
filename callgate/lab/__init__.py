"""The test lab: nodes and pods in network namespaces, with real packets.

``Lab(prefix).running(inventory)`` builds the topology of docs/design.md ("The test lab")
and tears it down again; :func:`probe_matrix` tells who really reaches whom.

The names below are imported lazily: ``python -m callgate.lab.server`` and
``python -m callgate.lab.probe`` run once per pod and must not pay for the
policy model (pydantic, YAML) just because this package is their parent.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callgate.lab.netns import LabError
    from callgate.lab.probe import MatrixKey, ProbeResult, probe_details, probe_matrix
    from callgate.lab.topology import Lab, LabState

_EXPORTS = {
    "Lab": "callgate.lab.topology",
    "LabState": "callgate.lab.topology",
    "LabError": "callgate.lab.netns",
    "MatrixKey": "callgate.lab.probe",
    "ProbeResult": "callgate.lab.probe",
    "probe_details": "callgate.lab.probe",
    "probe_matrix": "callgate.lab.probe",
}

__all__ = ["Lab", "LabError", "LabState", "MatrixKey", "ProbeResult", "probe_details", "probe_matrix"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
