"""A local OTLP/HTTP sink for `python -m bench --otel`: answers 200 to every POST /v1/traces.

`python -m bench.otlp_sink --port N`

It keeps only counts (GET /stats: exports, bytes, spans): the service pays the whole cost of
encoding and sending its spans, and the sink adds little CPU to the shared machine (protobuf's
C parser counts a batch of 512 spans in well under a millisecond). The span count shows
whether the SDK dropped any (its queue full) during a run.
"""

from __future__ import annotations

import argparse

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

STATS = web.AppKey("stats", dict[str, int])


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    export = ExportTraceServiceRequest.FromString(body)
    stats = request.app[STATS]
    stats["exports"] += 1
    stats["bytes"] += len(body)
    stats["spans"] += sum(
        len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans
    )
    # An empty ExportTraceServiceResponse: everything accepted.
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATS] = {"exports": 0, "bytes": 0, "spans": 0}
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
