"""The HTTP layer on top of `service.core`: the FastAPI app, its routers, request parsing and response rendering,
admission, metrics, settings and the command line. The work itself is `service.core.operations`."""
