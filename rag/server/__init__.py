"""The server: REST API, web UI mount, request guard, ingestion jobs and the model queue.

`create_app(service)` builds it all around one `PageRAG` service; the core (`rag.service` and
below) never imports this package.
"""

from rag.server.app import create_app

__all__ = ["create_app"]
