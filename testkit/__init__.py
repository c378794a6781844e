"""Helpers the tests and the benchmarks share: phone-style photos, headless Chromium, the service as a real process.

A package of its own so that `bench/` need not import `tests/` (and `tests/` may import `bench/`); like `bench/`,
it imports only the core (`service.core`) and starts the HTTP server as a subprocess (`python -m service`).
"""
