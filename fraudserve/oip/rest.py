"""The Open Inference Protocol over REST: a Starlette app serving ``/v2/...``, mounted by service.py.

JSON tensors and the binary tensor data extension (``Inference-Header-Content-Length``),
so ``tritonclient.http`` works with its defaults. Errors are ``{"error": "<message>"}``
with the status from ``fraudserve.oip.errors``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fraudserve.errors import InvalidInput, Unavailable
from fraudserve.oip.codec import WireTensor, json_values, raw_bytes
from fraudserve.oip.dataplane import DataPlane, InferRequest, InferResponse, routing_key_parameter
from fraudserve.oip.errors import http_error
from fraudserve.oip.repository import ModelEntry

TRANSPORT = "oip_rest"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"

Endpoint = Callable[[Request], Awaitable[Response]]


class _InputJSON(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class _OutputJSON(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    parameters: dict[str, Any] | None = None


class _InferJSON(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_InputJSON]
    outputs: list[_OutputJSON] | None = None


def attach(plane: DataPlane) -> None:
    """Give the app this worker's data plane (called from the service's startup hook)."""
    app.state.plane = plane


def _plane(request: Request) -> DataPlane:
    plane: DataPlane | None = getattr(request.app.state, "plane", None)
    if plane is None:
        raise Unavailable("the inference server is starting; retry later")
    return plane


def _endpoint(handler: Endpoint) -> Endpoint:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - the OIP REST boundary maps every error once
            status, text = http_error(exc, transport=TRANSPORT)
            headers = {"Retry-After": "1"} if status == 503 else None
            return JSONResponse({"error": text}, status_code=status, headers=headers)

    return wrapped


@_endpoint
async def server_metadata(request: Request) -> Response:
    meta = _plane(request).metadata
    return JSONResponse({"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)})


@_endpoint
async def live(request: Request) -> Response:
    return JSONResponse({"live": _plane(request).live()})


@_endpoint
async def ready(request: Request) -> Response:
    is_ready = await _plane(request).ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@_endpoint
async def model_ready(request: Request) -> Response:
    name, version = _model_path(request)
    is_ready = await _plane(request).model_ready(name, version)
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


@_endpoint
async def model_metadata(request: Request) -> Response:
    entry = _plane(request).model_metadata(*_model_path(request))
    return JSONResponse(_metadata_json(entry))


@_endpoint
async def repository_index(request: Request) -> Response:
    states = await _plane(request).model_states()
    return JSONResponse([{"name": m.entry.name, "version": m.entry.version, "state": m.state} for m in states])


@_endpoint
async def infer(request: Request) -> Response:
    name, version = _model_path(request)
    body = await request.body()
    header, binary = _split_body(request, body)
    try:
        doc = _InferJSON.model_validate_json(header)
    except ValidationError as exc:
        raise _invalid(exc) from None
    default_binary = _flag((doc.parameters or {}).get("binary_data_output"))
    outputs = doc.outputs or []
    response = await _plane(request).infer(
        InferRequest(
            model_name=name,
            model_version=version,
            id=doc.id or "",
            inputs=_inputs(doc.inputs, binary),
            outputs=[o.name for o in outputs],
            routing_key=routing_key_parameter(doc.parameters),
        ),
        transport=TRANSPORT,
    )
    binary_outputs = {o.name for o in outputs if _flag((o.parameters or {}).get("binary_data"), default_binary)}
    if not outputs and default_binary:
        binary_outputs = {t.name for t in response.outputs}
    return _infer_response(response, binary_outputs)


def _model_path(request: Request) -> tuple[str, str]:
    return request.path_params["name"], request.path_params.get("version", "")


def _metadata_json(entry: ModelEntry) -> dict[str, Any]:
    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {
        "name": entry.name,
        "versions": [entry.version],
        "platform": entry.platform,
        "inputs": tensors(entry.inputs),
        "outputs": tensors(entry.outputs),
    }


def _split_body(request: Request, body: bytes) -> tuple[bytes, bytes]:
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        return body, b""
    try:
        n = int(length)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {length!r}", field=HEADER_LENGTH) from None
    if not 0 <= n <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {n} exceeds the body of {len(body)} bytes", field=HEADER_LENGTH)
    return body[:n], body[n:]


def _inputs(inputs: list[_InputJSON], binary: bytes) -> list[WireTensor]:
    """The inputs undecoded: the data plane checks their headers and the row cap first."""
    tensors = []
    offset = 0
    for item in inputs:
        size = (item.parameters or {}).get(BINARY_SIZE)
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input {item.name!r}: {BINARY_SIZE} {size!r} does not fit the binary data", field=item.name
                )
            raw = binary[offset : offset + size]
            tensors.append(WireTensor(item.name, item.datatype, tuple(item.shape), raw=raw))
            offset += size
        elif item.data is None:
            raise InvalidInput(f"input {item.name!r} has neither data nor {BINARY_SIZE}", field=item.name)
        else:
            tensors.append(WireTensor(item.name, item.datatype, tuple(item.shape), values=item.data))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input", field="inputs")
    return tensors


def _infer_response(response: InferResponse, binary_outputs: set[str]) -> Response:
    blobs: list[bytes] = []
    outputs = []
    for tensor in response.outputs:
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.name in binary_outputs:
            blob = raw_bytes(tensor)
            blobs.append(blob)
            out["parameters"] = {BINARY_SIZE: len(blob)}
        else:
            out["data"] = json_values(tensor)
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    doc["outputs"] = outputs
    if not blobs:
        return JSONResponse(doc)
    header = json.dumps(doc, separators=(",", ":")).encode()
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _flag(value: Any, default: bool = False) -> bool:
    return default if value is None else bool(value)


def _invalid(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "body"
    return InvalidInput(f"malformed inference request: {first['msg']}", field=location)


_V2 = "/v2"
_MODEL = _V2 + "/models/{name}"
_VERSION = _MODEL + "/versions/{version}"

# Routes carry the /v2 prefix and the app is mounted at the root: BentoML mounts apps with a
# pass-through Mount that claims only paths its routes match, and a Mount at "/v2" would
# redirect `GET /v2` (server metadata) to `/v2/`, which tritonclient does not follow.
app = Starlette(
    routes=[
        Route(_V2, server_metadata, methods=["GET"]),
        Route(_V2 + "/health/live", live, methods=["GET"]),
        Route(_V2 + "/health/ready", ready, methods=["GET"]),
        Route(_V2 + "/repository/index", repository_index, methods=["POST"]),
        Route(_MODEL, model_metadata, methods=["GET"]),
        Route(_VERSION, model_metadata, methods=["GET"]),
        Route(_MODEL + "/ready", model_ready, methods=["GET"]),
        Route(_VERSION + "/ready", model_ready, methods=["GET"]),
        Route(_MODEL + "/infer", infer, methods=["POST"]),
        Route(_VERSION + "/infer", infer, methods=["POST"]),
    ]
)
