"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on ``grpc.aio``.

Started inside each API worker, on the worker's own event loop, so it calls the same
``InferenceCore`` (and runners, and batching) as REST. ``grpc.so_reuseport`` lets every
worker bind the same port; the kernel spreads connections between them. The standard
health service (following the worker's readiness probe) and server reflection are served beside it.

Only this module imports the generated ``inference`` stubs: tritonclient ships its own copy
of the same proto package, and both in one process is a duplicate-symbol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fraudserve import tracing
from fraudserve.errors import InvalidInput
from fraudserve.oip.codec import WireTensor, raw_bytes
from fraudserve.oip.dataplane import DataPlane, InferRequest, InferResponse, routing_key_parameter
from fraudserve.oip.errors import grpc_error
from fraudserve.oip.metrics import observe
from fraudserve.oip.proto import grpc_service_pb2 as pb
from fraudserve.oip.proto import grpc_service_pb2_grpc as pb_grpc
from fraudserve.oip.repository import ModelEntry
from fraudserve.readiness import ReadinessProbe
from fraudserve.security.grpc_auth import check_message

log = logging.getLogger(__name__)

TRANSPORT = "oip_grpc"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Messages of one stream read but not yet answered: enough to fill the runners' batches, bounded
# so a fast producer (or a client that never reads) cannot queue unbounded work in the server.
STREAM_MAX_INFLIGHT = 64

# The typed `contents` field that carries each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Request = TypeVar("Request")
Reply = TypeVar("Reply")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]]


def _observed(method: str) -> Callable[[Handler[Request, Reply]], Handler[Request, Reply]]:
    """Count and time a unary RPC by status code; map its errors through the one gRPC table."""

    def decorate(handler: Handler[Request, Reply]) -> Handler[Request, Reply]:
        @functools.wraps(handler)
        async def wrapped(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Reply:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await handler(self, request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # noqa: BLE001 - the gRPC boundary maps every error once
                code, details = grpc_error(exc, transport=TRANSPORT)
                await context.abort(code, details)
                raise AssertionError("context.abort returned") from None
            finally:
                observe(method, code.name, time.perf_counter() - started)

        return wrapped

    return decorate


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, *, stream_max_inflight: int = STREAM_MAX_INFLIGHT) -> None:
        self.plane = plane
        self.stream_max_inflight = stream_max_inflight

    @_observed("ServerLive")
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    @_observed("ServerReady")
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.plane.ready())

    @_observed("ModelReady")
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=await self.plane.model_ready(request.name, request.version))

    @_observed("ServerMetadata")
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        meta = self.plane.metadata
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=list(meta.extensions))

    @_observed("ModelMetadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return _metadata(self.plane.model_metadata(request.name, request.version))

    @_observed("RepositoryIndex")
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=m.entry.name, version=m.entry.version, state=m.state)
                for m in await self.plane.model_states()
            ]
        )

    @_observed("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        with tracing.grpc_server_span("ModelInfer", _metadata_of(context)):
            return _infer_response(await self.plane.infer(_infer_request(request), transport=TRANSPORT))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of a stream are scored concurrently (so they batch); answers come as they finish.

        A slot is taken before a message is read and given back once its answer is written, so
        at most ``stream_max_inflight`` messages are read but unanswered. When they are, the
        server stops reading: a client that sends but does not read is held back by flow control.
        """
        limit = self.stream_max_inflight
        slots = asyncio.Semaphore(limit)
        # Never full: each pending answer holds a slot, and the end marker comes after the last.
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue(maxsize=limit + 1)
        tasks: set[asyncio.Task[None]] = set()

        metadata = _metadata_of(context)

        async def answer(request: pb.ModelInferRequest) -> None:
            with tracing.grpc_server_span("ModelStreamInfer", metadata):
                answers.put_nowait(await self._stream_one(request))

        async def read() -> None:
            try:
                while True:
                    await slots.acquire()
                    try:
                        request = await anext(request_iterator)
                    except StopAsyncIteration:
                        slots.release()
                        break
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.wait(set(tasks))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await answers.get()) is not None:
                yield reply
                slots.release()
            await reader  # surfaces a failure of the request stream itself
        finally:
            for task in (reader, *tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _stream_one(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            check_message()  # every message spends a token, like a unary call
            response = await self.plane.infer(_infer_request(request), transport=TRANSPORT)
            return pb.ModelStreamInferResponse(infer_response=_infer_response(response))
        except Exception as exc:  # noqa: BLE001 - one failed request (rate limit included) does not end the stream
            code, details = grpc_error(exc, transport=TRANSPORT)
            echo = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            return pb.ModelStreamInferResponse(error_message=f"{code.name}: {details}", infer_response=echo)
        finally:
            observe("ModelStreamInfer", code.name, time.perf_counter() - started)


def _metadata_of(context: Any) -> dict[str, str]:
    """The call's text metadata (``traceparent`` among it); binary ``-bin`` entries are not trace context."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _infer_request(request: pb.ModelInferRequest) -> InferRequest:
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=_inputs(request),
        outputs=[o.name for o in request.outputs],
        routing_key=routing_key_parameter(request.parameters),
    )


def _inputs(request: pb.ModelInferRequest) -> list[WireTensor]:
    """The inputs undecoded: the data plane checks their headers and the row cap first."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs", field="raw_input_contents"
        )
    tensors = []
    for i, item in enumerate(request.inputs):
        shape = tuple(item.shape)
        if raw:
            tensors.append(WireTensor(item.name, item.datatype, shape, raw=raw[i]))
            continue
        contents_field = CONTENTS_FIELD.get(item.datatype)
        if contents_field is None:
            raise InvalidInput(
                f"input {item.name!r}: datatype {item.datatype!r} needs raw_input_contents", field=item.name
            )
        tensors.append(WireTensor(item.name, item.datatype, shape, values=getattr(item.contents, contents_field)))
    return tensors


def _infer_response(response: InferResponse) -> pb.ModelInferResponse:
    # Outputs travel as raw bytes, as Triton sends them: every OIP gRPC client reads those.
    return pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape)
            for t in response.outputs
        ],
        raw_output_contents=[raw_bytes(t) for t in response.outputs],
    )


def _metadata(entry: ModelEntry) -> pb.ModelMetadataResponse:
    def tensors(specs: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]

    return pb.ModelMetadataResponse(
        name=entry.name,
        versions=[entry.version],
        platform=entry.platform,
        inputs=tensors(entry.inputs),
        outputs=tensors(entry.outputs),
    )


class ReadinessHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1`` that follows the readiness probe: SERVING only while every runner answers.

    Each Check asks the probe (cached and single-flight, so Check cannot drive runner load);
    every probe round, whoever asked for it, updates the status that Watch streams.
    """

    def __init__(self, probe: ReadinessProbe, services: Sequence[str]) -> None:
        super().__init__()
        self.probe = probe
        self.services = tuple(services)
        self._first: asyncio.Task[None] | None = None
        probe.on_result(self.follow)

    async def start(self) -> None:
        """NOT_SERVING until a probe says otherwise; the first probe runs in the background."""
        for service in self.services:
            await self.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

        async def first() -> None:
            await self.follow(await self.probe.states())

        self._first = asyncio.create_task(first())

    async def follow(self, states: Any) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if all(states.values())
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self.services:
            await self.set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        await self.probe.states()
        return await super().Check(request, context)


class GrpcServer:
    """A running OIP gRPC server with its health service; ``stop`` drains it."""

    def __init__(self, server: grpc.aio.Server, health_servicer: ReadinessHealth, port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start(
    plane: DataPlane,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_concurrent_rpcs: int | None = None,
    stream_max_inflight: int = STREAM_MAX_INFLIGHT,
) -> GrpcServer:
    server = grpc.aio.server(
        interceptors=list(interceptors),
        # Past this many RPCs in flight grpc answers RESOURCE_EXHAUSTED at once instead of queueing.
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    servicer = InferenceServicer(plane, stream_max_inflight=stream_max_inflight)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = ReadinessHealth(plane.readiness, ("", SERVICE_NAME))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.start()
    services = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(services, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise RuntimeError(f"cannot bind the OIP gRPC server to {host}:{port}")
    await server.start()
    log.info("OIP gRPC server listening on %s:%d", host, bound)
    return GrpcServer(server, health_servicer, bound)
