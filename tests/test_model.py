"""The policy model does not change after it is built: the compilers keep what they
computed from it (the incremental compiler by ``id()``), so a change must be a new object."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from callgate.policy import load_policies
from callgate.policy.model import Endpoint, Inventory, Namespace, PolicySet
from tests.helpers import SHOP, standard


def endpoint(labels: dict[str, str]) -> Endpoint:
    return Endpoint("a", "x", labels, "n1", (ipaddress.ip_address("198.18.0.1"),))


def test_endpoints_and_namespaces_are_frozen_with_read_only_labels() -> None:
    labels = {"app": "web"}
    ep, ns = endpoint(labels), Namespace("x", labels)
    labels["app"] = "db"  # the caller's dict is copied, not shared
    assert ep.labels == {"app": "web"} and ns.labels == {"app": "web"}
    for obj in (ep, ns):
        with pytest.raises(TypeError):
            obj.labels["app"] = "db"  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.labels = {}  # type: ignore[misc]
    with pytest.raises(TypeError, match="unhashable"):
        hash(ep)


def test_a_change_is_a_new_equal_or_unequal_object() -> None:
    ep = endpoint({"app": "web"})
    same = dataclasses.replace(ep)
    assert same == ep and same is not ep and same.labels is ep.labels  # already read-only: shared
    relabelled = dataclasses.replace(ep, labels={"app": "db"})
    assert relabelled != ep and relabelled.labels == {"app": "db"}
    with pytest.raises(TypeError):
        relabelled.labels["app"] = "web"  # type: ignore[index]


def test_collections_are_tuples_and_read_only_mappings_whatever_was_passed() -> None:
    endpoints = [endpoint({})]
    namespaces = {"x": Namespace("x", {})}
    inv = Inventory(namespaces, endpoints)  # type: ignore[arg-type]  # lists are taken over as tuples
    endpoints.clear()
    namespaces.clear()
    assert isinstance(inv.endpoints, tuple) and len(inv.endpoints) == 1 and list(inv.namespaces) == ["x"]
    with pytest.raises(TypeError):
        inv.namespaces["y"] = Namespace("y", {})  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        inv.endpoints = ()  # type: ignore[misc]
    policies = PolicySet([])  # type: ignore[arg-type]
    assert policies.policies == () and Inventory() == Inventory({}, ())


def test_loaded_inputs_are_immutable() -> None:
    inv = standard()
    assert isinstance(inv.endpoints, tuple)
    with pytest.raises(TypeError):
        inv.endpoints[0].labels["pod"] = "z"  # type: ignore[index]
    with pytest.raises(TypeError):
        inv.namespaces["x"].labels["ns"] = "z"  # type: ignore[index]
    assert isinstance(load_policies(SHOP).policies, tuple)
