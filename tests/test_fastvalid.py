"""The model-free checks of endpoints and pods agree with the pydantic models.

For any input: the fast path either defers (None) or gives exactly the
Endpoint the model path gives, and it never accepts what a model refuses. For
well-formed input of the usual types it does not defer (or it would be a
no-op that hides behind the fallback).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from callgate.errors import InputError
from callgate.policy.fastvalid import _port, native_endpoint, pod_endpoint
from callgate.policy.inventory import (
    INTERFACE_ANNOTATION,
    NETNS_ANNOTATION,
    EndpointModel,
    PodModel,
    endpoint_model_endpoint,
    inventory_from_dict,
    pod_model_endpoint,
)
from callgate.policy.model import Endpoint

names = st.sampled_from(["web", "db-1", "a.b", "x" * 63, "x" * 254, "Web", "-a", "a_b", ""])
label_keys = st.sampled_from(["app", "example.com/tier", "k8s.io/x/y", "-bad", "a" * 64, "Ok_.k"])
label_values = st.sampled_from(["web", "", "v1.2", "-x", "a" * 64, "A_b.c"])
ips = st.sampled_from(["198.18.0.1", "fd00::1", "198.18.0.256", "01.2.3.4", "fe80::1%eth0", "::ffff:1.2.3.4",
                       "not-an-ip"])
port_names = st.sampled_from(["http", "metrics", "h--p", "123", "UPPER", "a" * 16])
protocols = st.sampled_from(["TCP", "UDP", "SCTP", "tcp", "ICMP"])
odd = st.sampled_from([None, 7, 80.0, 80.5, True, "80", [], {}, "x"])


def anything(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right kind, sometimes one of the wrong kind."""
    return st.one_of(good, good, good, good, good, good, good, good, odd)


ports = st.integers(min_value=-1, max_value=70000)
port_entries = st.fixed_dictionaries({"port": anything(ports)},
                                     optional={"name": anything(port_names), "protocol": anything(protocols),
                                               "extra": st.just(1)})
labels = st.dictionaries(label_keys, anything(label_values), max_size=3)
native = st.fixed_dictionaries(
    {"name": anything(names), "namespace": anything(names)},
    optional={"labels": anything(labels), "node": anything(names), "ips": anything(st.lists(anything(ips), max_size=2)),
              "ports": anything(st.lists(anything(port_entries), max_size=2)),
              "interface": anything(st.sampled_from(["veth1", "a" * 16, "a/b", "."])),
              "netns": anything(st.sampled_from(["/run/netns/x", "/proc/12/ns/net", "/etc/passwd"])),
              "unknown": st.just(1)})


def model_native(data: Any) -> Endpoint | None:
    try:
        return endpoint_model_endpoint(EndpointModel.model_validate(data))
    except ValidationError:
        return None


@settings(max_examples=1500, deadline=None)
@given(native)
def test_native_endpoint_agrees_with_the_model(data: dict[str, Any]) -> None:
    fast = native_endpoint(data)
    if fast is not None:
        assert fast == model_native(data), data


container_ports = st.fixed_dictionaries({"containerPort": anything(ports)},
                                        optional={"name": anything(port_names), "protocol": anything(protocols),
                                                  "hostPort": st.just(8080)})
containers = st.lists(anything(st.fixed_dictionaries(
    {}, optional={"ports": anything(st.lists(anything(container_ports), max_size=2)), "image": st.just("x")})),
    max_size=2)
annotations = st.dictionaries(
    st.sampled_from([INTERFACE_ANNOTATION, NETNS_ANNOTATION, "other"]),
    anything(st.sampled_from(["veth1", "a" * 16, "/run/netns/x", "/etc/passwd", "y"])), max_size=3)
pods = st.fixed_dictionaries(
    {"metadata": anything(st.fixed_dictionaries(
        {"name": anything(names)},
        optional={"namespace": anything(names), "labels": anything(labels),
                  "annotations": anything(annotations), "uid": st.just("u")}))},
    optional={
        "spec": anything(st.fixed_dictionaries({}, optional={"nodeName": anything(names),
                                                             "containers": anything(containers)})),
        "status": anything(st.fixed_dictionaries({}, optional={
            "phase": anything(st.sampled_from(["Running", "Pending"])),
            "podIP": anything(ips),
            "podIPs": anything(st.lists(anything(st.fixed_dictionaries({"ip": anything(ips)})), max_size=2)),
        })),
    })


def model_pod(data: Any) -> Endpoint | None:
    try:
        return pod_model_endpoint(PodModel.model_validate(data))
    except ValidationError:
        return None


@settings(max_examples=1500, deadline=None)
@given(pods)
def test_pod_endpoint_agrees_with_the_model(data: dict[str, Any]) -> None:
    fast = pod_endpoint(data, INTERFACE_ANNOTATION, NETNS_ANNOTATION)
    if fast is not None:
        assert fast == model_pod(data), data


def test_well_formed_input_takes_the_fast_path() -> None:
    entry = {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "example.com/tier": ""},
             "node": "node-1", "ips": ["198.18.0.1", "fd00::1"], "interface": "veth1",
             "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]}
    assert native_endpoint(entry) == model_native(entry) is not None
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}, "uid": "u",
                        "annotations": {INTERFACE_ANNOTATION: "veth1", "other": "x"}},
           "spec": {"nodeName": "node-1", "containers": [{"image": "x", "ports": [{"containerPort": 80,
                                                                                   "name": "http"}]}]},
           "status": {"phase": "Running", "podIP": "198.18.0.1",
                      "podIPs": [{"ip": "198.18.0.1"}, {"ip": "fd00::1"}]}}
    assert pod_endpoint(pod, INTERFACE_ANNOTATION, NETNS_ANNOTATION) == model_pod(pod) is not None


def test_a_shared_port_is_only_given_for_exactly_its_types() -> None:
    """Checked ports are shared by key; 80.0 and True equal 80 and 1 as keys, but the
    models decide about them (a float, a bool), so they must not get the shared port."""
    assert _port("http", 80, "TCP") is _port("http", 80, "TCP")
    assert _port("http", 80.0, "TCP") is None
    assert _port(None, 1, "UDP") is not None and _port(None, True, "UDP") is None


def test_a_port_of_an_unhashable_type_goes_to_the_model_and_gets_its_message() -> None:
    """Found by hypothesis in a CI run: ``port: []`` raised TypeError (the shared-port
    cache looked the list up as a key) instead of letting the model report it."""
    entry = {"name": "web", "namespace": "web", "ports": [{"port": []}]}
    assert native_endpoint(entry) is None and model_native(entry) is None
    assert _port({"a": 1}, 80, "TCP") is None and _port("http", 80, ["TCP"]) is None
    with pytest.raises(InputError, match=r"ports\[0\]\.port"):
        inventory_from_dict({"apiVersion": "callgate/v1", "kind": "Inventory", "endpoints": [entry]})
