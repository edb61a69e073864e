"""How split-learning messages travel: in process (experiments) or over gRPC (a real process boundary).

Both carry the same bytes (:mod:`privnerf.split.protocol`), so the in-process path counts the same traffic
and runs the same checks as the network one.

gRPC: one unary method ``/privnerf.split.Split/Exchange``, bytes in and bytes out, registered with a generic
handler (no generated code). The server answers requests one at a time (one worker thread): split training
is a strict request/response sequence. Both ends cap message size at ``max_bytes``; gRPC refuses larger
messages with ``RESOURCE_EXHAUSTED`` before they reach our decoder, and the decoder refuses them again.
Channels are plaintext: run them on loopback or inside a tunnel (TLS is not wired in yet).
"""

from __future__ import annotations

import logging
import socket
import time
from concurrent import futures

import grpc

from privnerf.split.protocol import DEFAULT_MAX_BYTES

log = logging.getLogger(__name__)

SERVICE = "privnerf.split.Split"
METHOD = f"/{SERVICE}/Exchange"


class TransportError(RuntimeError):
    """The other side could not be reached or refused at the transport level."""


class InProcessTransport:
    """Calls the server's handler directly with the encoded bytes."""

    def __init__(self, server):
        self.server = server

    def request(self, data: bytes) -> bytes:
        return self.server.handle(bytes(data))

    def close(self) -> None:
        pass


def _options(max_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]


class GrpcTransport:
    """Client end of the gRPC transport. ``address`` is ``host:port``."""

    def __init__(self, address: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = 600.0,
                 connect_timeout_s: float = 60.0):
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(address, options=_options(max_bytes))
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise TransportError(f"split server at {address} did not answer within {connect_timeout_s:.0f} s") from None
        self._call = self.channel.unary_unary(METHOD)  # bytes in, bytes out: no serializers

    def request(self, data: bytes) -> bytes:
        try:
            return self._call(bytes(data), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise TransportError(f"split server at {self.address}: {exc.code().name}: {exc.details()}") from None

    def close(self) -> None:
        self.channel.close()


def serve_grpc(server, address: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[grpc.Server, int]:
    """Serve ``server.handle`` on ``address`` (``host:port``; port 0 picks a free one). Returns the running
    gRPC server and the bound port."""

    def exchange(request: bytes, context) -> bytes:
        return server.handle(request)

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Exchange": grpc.unary_unary_rpc_method_handler(exchange)})
    g = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=_options(max_bytes))
    g.add_generic_rpc_handlers((handler,))
    port = g.add_insecure_port(address)
    if port == 0:
        raise TransportError(f"could not bind the split server to {address}")
    g.start()
    log.info("split server listening on %s (port %d)", address, port)
    return g, port


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TransportError(f"nothing listening on {host}:{port} after {timeout_s:.0f} s")
