"""``python -m keyplane.modelserver``: run the built-in model server from the command line.

    python -m keyplane.modelserver --host 127.0.0.1 --port 0 --latency-ms 20 --token-latency-ms 5

Port 0 picks a free port; the line ``keyplane models listening on http://HOST:PORT`` on stdout says
which.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from keyplane.modelserver.config import DEFAULT_MODELS, ModelServerConfig
from keyplane.modelserver.server import DEFAULT_HOST, DEFAULT_PORT, serve


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m keyplane.modelserver",
        description="keyplane's built-in OpenAI-compatible model server (deterministic output).",
        epilog="Per-request test headers: x-keyplane-latency-ms (delay before the first byte), "
        "x-keyplane-token-latency-ms (delay before each streamed token), x-keyplane-fail-status "
        "(answer with that HTTP error). GET /_stats reports in-flight, completed and "
        "disconnected requests.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (%(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to bind, 0 for any free port (%(default)s)",
    )
    parser.add_argument(
        "--latency-ms",
        type=_non_negative,
        default=0.0,
        help="delay before the first byte of each inference response",
    )
    parser.add_argument(
        "--token-latency-ms",
        type=_non_negative,
        default=0.0,
        help="delay before each streamed token",
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated model names for /v1/models; empty: answer any id (%(default)s)",
    )
    parser.add_argument(
        "--embedding-dims",
        type=int,
        default=256,
        help="embedding size when a request sets no 'dimensions' (%(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: no check)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    config = ModelServerConfig(
        models=[name.strip() for name in args.models.split(",") if name.strip()],
        latency_s=args.latency_ms / 1000,
        token_latency_s=args.token_latency_ms / 1000,
        embedding_dims=args.embedding_dims,
        api_key=args.api_key,
    )
    try:
        serve(host=args.host, port=args.port, config=config)
    except OSError as exc:
        # Most likely the port is taken: say so in one line rather than with a traceback.
        raise SystemExit(
            f"keyplane models: cannot listen on {args.host}:{args.port}: {exc}"
        ) from None


if __name__ == "__main__":
    main()
