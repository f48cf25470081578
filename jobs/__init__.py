"""Task state, queues, settings and the arq worker that runs crews."""
