"""Server reflection served as grpc.reflection.v1 and as v1alpha, by one servicer.

grpcio-reflection 1.85 ships only v1alpha, so tools that ask v1 first (grpcurl,
buf curl) were refused before falling back. v1 is the same protocol message for
message and field for field; only the proto package differs. So the v1alpha
servicer answers both: the v1 method decodes and encodes with v1alpha's
messages, whose bytes are v1's. The v1 file descriptor (v1alpha's, renamed) is
added to the default descriptor pool, so reflection describes v1 too.

What it does not do: decide who may call reflection (server/auth.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
SERVICES = (V1_SERVICE, V1ALPHA_SERVICE)


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """grpc/reflection/v1/reflection.proto in `pool`, made from v1alpha's descriptor."""
    try:
        pool.FindFileByName(V1_FILE)
        return  # registered already (a second gateway in this process, or a newer library)
    except KeyError:
        pass
    alpha = reflection_pb2.DESCRIPTOR.package
    f = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(f)
    f.name, f.package = V1_FILE, V1_PACKAGE
    f.ClearField("options")  # v1alpha's: deprecated, its java and go packages

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{alpha}.", f".{V1_PACKAGE}.", 1)

    for message in f.message_type:  # no nested types in this file
        for field in message.field:
            if field.type_name:  # a message or enum field
                field.type_name = renamed(field.type_name)
    for service in f.service:
        for method in service.method:
            method.input_type, method.output_type = renamed(method.input_type), renamed(method.output_type)
    pool.AddSerializedFile(f.SerializeToString())


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Reflection of `service_names` (and of itself) on `server`, as v1 and v1alpha."""
    _register_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer((*service_names, *SERVICES))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )
