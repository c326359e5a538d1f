"""Channel settings shared by the sync and async clients: credentials, the retry
policy (a gRPC service config), and the token as call metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import grpc

Metadata = tuple[tuple[str, str], ...]
Tls = bool | bytes | None
Retries = bool | Mapping[str, Any] | str

# Recommend, StreamRecommend, SimilarItems, SendFeedback, ForgetUser, UpsertItems are
# retried on UNAVAILABLE only; DeleteItems and ImportEvents are not (README "Retries").
PUBLISHED_SERVICE_CONFIG: str = (resources.files("recgen_client._gen") / "service_config.json").read_text()


def options(
    retries: Retries, extra: Mapping[str, Any] | None, server_name: str | None
) -> list[tuple[str, Any]]:
    """Channel options: the service config (published, custom, or retries off)."""
    opts: list[tuple[str, Any]] = []
    if retries is True:
        opts.append(("grpc.service_config", PUBLISHED_SERVICE_CONFIG))
    elif retries is False:
        opts.append(("grpc.enable_retries", 0))
    else:
        opts.append(("grpc.service_config", retries if isinstance(retries, str) else json.dumps(retries)))
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    opts.extend((extra or {}).items())
    return opts


def credentials(tls: Tls, client_cert: tuple[bytes, bytes] | None) -> grpc.ChannelCredentials | None:
    """None for plaintext; otherwise TLS with the system roots (tls=True) or the PEM roots given
    (tls=bytes), and a client certificate (chain PEM, key PEM) for mutual TLS."""
    if not tls:
        if client_cert is not None:
            raise ValueError("client_cert needs tls=True or tls=<root certificates PEM>")
        return None
    roots = tls if isinstance(tls, bytes) else None
    chain, key = client_cert if client_cert is not None else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


def token_metadata(token: str | None) -> Metadata:
    """`authorization: Bearer TOKEN`, what the server's auth interceptor reads. Sent as plain
    metadata (not call credentials) so it works on plaintext channels too: use TLS off loopback."""
    if token is None:
        return ()
    if not token or any(c.isspace() for c in token):
        raise ValueError("token must be non-empty and contain no whitespace")
    return (("authorization", f"Bearer {token}"),)
