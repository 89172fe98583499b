"""Options every command that talks to a running server shares, and the client they make."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from embedsvc.cli.failures import UNREACHABLE, USAGE, CommandError
from embedsvc.client import EmbedClient, EmbedServiceError

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "EMBEDSVC_TARGET"
API_KEY_ENV = "EMBEDSVC_API_KEY"  # the server reads the same variable (one key or several, comma-separated)


def connection_options() -> argparse.ArgumentParser:
    """A parent parser: --target, --api-key, --tls, --tls-ca, --timeout."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server connection")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"the server (default: ${TARGET_ENV}, else {DEFAULT_TARGET}); several replicas: "
        "ipv4:HOST:PORT,HOST:PORT or dns:///NAME:PORT, called round-robin",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"API key (default: ${API_KEY_ENV}; its first key if it lists several)",
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    group.add_argument(
        "--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA certificate (implies --tls)"
    )
    group.add_argument("--timeout", type=float, default=120.0, help="seconds per call (default 120)")
    group.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="first wait up to this long for the server to be serving (scripts that start it)",
    )
    return parent


def target_of(args: argparse.Namespace) -> str:
    return str(args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET)


def keys_from_env(*variables: str) -> list[str]:
    """API keys listed (comma-separated) in these environment variables, in order."""
    return [k.strip() for v in variables for k in os.environ.get(v, "").split(",") if k.strip()]


def api_key_of(args: argparse.Namespace) -> str | None:
    if args.api_key:
        return str(args.api_key)
    keys = keys_from_env(API_KEY_ENV)
    return keys[0] if keys else None


def root_certificates_of(args: argparse.Namespace) -> bytes | None:
    if not args.tls_ca:
        return None
    try:
        return Path(args.tls_ca).read_bytes()
    except OSError as exc:
        raise CommandError(f"--tls-ca {args.tls_ca}: cannot read it ({exc.strerror})", USAGE) from exc


def open_client(args: argparse.Namespace) -> EmbedClient:
    if args.timeout is not None and args.timeout <= 0:
        raise CommandError("--timeout must be above 0 seconds", USAGE)
    client = EmbedClient(
        target_of(args),
        api_key=api_key_of(args),
        tls=bool(args.tls),
        root_certificates=root_certificates_of(args),
        timeout=args.timeout,
    )
    if args.wait:
        _wait_serving(client, target_of(args), args.wait)
    return client


def _wait_serving(client: EmbedClient, target: str, seconds: float) -> None:
    """Poll grpc.health.v1 until the server says SERVING (it says NOT_SERVING while loading models);
    stop early when the local server that was starting on ``target`` has died (embedsvc.runtime)."""
    from grpc_health.v1 import health_pb2

    from embedsvc.runtime import died_starting

    deadline = time.monotonic() + seconds
    began = time.time()
    status = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = client.health(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
        except EmbedServiceError as exc:  # not up yet: keep polling until the deadline
            status = exc.code.name
        else:
            if reply == health_pb2.HealthCheckResponse.SERVING:
                return
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply)
        gone = died_starting(target, began)
        if gone:
            client.close()
            raise CommandError(f"stopped waiting for {target}: {gone}", UNREACHABLE)
        time.sleep(0.25)
    client.close()
    raise CommandError(
        f"the server at {target} was not serving after --wait {seconds:g} s ({status})", UNREACHABLE
    )
