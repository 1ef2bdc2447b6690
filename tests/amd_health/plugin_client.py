"""AMD's device plugin's side of the GPU health service, for the tests.

The messages come from the plugin's own compiled descriptor (fixtures/amd-device-plugin/metricssvc.descriptor.bin,
the bytes of `file_metricssvc_proto_rawDesc` in ROCm/k8s-device-plugin
internal/pkg/exporter/metricssvc/metricssvc.pb.go), not from our proto: a field number or a name that differed
from the plugin's would show here as a missing or garbled field. The calls follow the plugin's
internal/pkg/exporter/health.go: stat the socket, dial unix://, List(Empty) with a 5 s deadline, key by Device,
"healthy" -> Healthy, anything else -> Unhealthy, a device missing from the answer (or no answer) -> the plugin's
own default health.
"""
from __future__ import annotations

import os
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, message_factory

from tests.support import ROOT

DESCRIPTOR = ROOT / "fixtures" / "amd-device-plugin" / "metricssvc.descriptor.bin"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"  # pluginapi.Healthy / pluginapi.Unhealthy
QUERY_TIMEOUT = 5.0  # the plugin's queryTimeout


def plugin_file() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(DESCRIPTOR.read_bytes())


def _classes():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(empty_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(plugin_file())
    get = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))  # noqa: E731
    return get("metricssvc.GPUStateResponse"), get("metricssvc.GPUGetRequest")


Response, GetRequest = _classes()


def list_gpus(socket_path: str | Path, timeout: float = QUERY_TIMEOUT):
    """The plugin's List call: the GPUStateResponse, decoded with the plugin's message classes."""
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary("/metricssvc.MetricsService/List",
                                   request_serializer=empty_pb2.Empty.SerializeToString,
                                   response_deserializer=Response.FromString)
        return call(empty_pb2.Empty(), timeout=timeout)


def get_gpu_state(socket_path: str | Path, ids: list[str], timeout: float = QUERY_TIMEOUT):
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary("/metricssvc.MetricsService/GetGPUState",
                                   request_serializer=GetRequest.SerializeToString,
                                   response_deserializer=Response.FromString)
        return call(GetRequest(ID=ids), timeout=timeout)


def gpu_health(socket_path: str | Path) -> dict[str, str]:
    """getGPUHealth(): Device -> Healthy/Unhealthy; raises when the socket is missing or the call fails."""
    os.stat(socket_path)  # the plugin does not dial a socket that is not there
    return {g.Device: HEALTHY if g.Health == HEALTHY.lower() else UNHEALTHY for g in list_gpus(socket_path).GPUState}


def device_health(socket_path: str | Path, devices: list[str], default: str = HEALTHY) -> dict[str, str]:
    """PopulatePerGPUDHealth(): each of the plugin's devices (PCI addresses) to the health the kubelet is told."""
    try:
        h = gpu_health(socket_path)
    except (OSError, grpc.RpcError):
        h = {}
    return {d: h.get(d, default) for d in devices}
