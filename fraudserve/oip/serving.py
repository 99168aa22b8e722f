"""Start and stop the OIP transports of one API worker (called from service.py's hooks)."""

from __future__ import annotations

from dataclasses import dataclass

from fraudserve.inference import InferenceCore
from fraudserve.oip import grpc_server, rest
from fraudserve.oip.dataplane import DataPlane
from fraudserve.security import get_guards
from fraudserve.security.grpc_auth import GuardInterceptor
from fraudserve.settings import Settings

rest_app = rest.app


@dataclass
class OipTransports:
    plane: DataPlane
    grpc: grpc_server.GrpcServer | None
    grace_s: float

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop(self.grace_s)


async def start(core: InferenceCore, settings: Settings) -> OipTransports:
    """Attach the REST app to this worker's core and, when enabled, start the gRPC server."""
    plane = DataPlane(
        core,
        ready_timeout_s=settings.ready_probe_timeout_s,
        ready_cache_s=settings.ready_cache_s,
        routing_key_max_chars=settings.routing_key_max_chars,
    )
    rest.attach(plane)
    server = None
    if settings.grpc_enabled:
        server = await grpc_server.start(
            plane,
            host=settings.grpc_host,
            port=settings.grpc_port,
            max_message_bytes=settings.grpc_max_message_bytes,
            # The same key store and per-client budget as the REST middleware of this worker.
            interceptors=[GuardInterceptor(get_guards())],
            max_concurrent_rpcs=settings.max_inflight_requests,
            stream_max_inflight=settings.grpc_stream_max_inflight,
        )
    return OipTransports(plane, server, settings.grpc_shutdown_grace_s)
