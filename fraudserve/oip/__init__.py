"""The Open Inference Protocol (KServe V2 / Triton / MLServer) over REST (/v2) and gRPC.

Modules: ``codec`` (tensors <-> feature matrix), ``repository`` (model names and metadata),
``dataplane`` (the transport-free protocol operations over the InferenceCore), ``rest`` and
``grpc_server`` (the two transports), ``errors`` (their status tables), ``serving`` (start/stop).
Importing this package imports no generated proto module (see ``grpc_server``).
"""
