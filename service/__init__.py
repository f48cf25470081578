"""The HTTP API (Litestar) and the ``agentfarm`` command line."""
