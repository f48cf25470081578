"""Sources: the search-and-read stage before a crew writes, and the citation gate after it.

``config`` (settings), ``errors``, ``events`` and ``gate`` import nothing heavy
and are safe in any process; ``stage`` (search backends, the page reader,
trafilatura) runs in worker processes, inside a crew's run.
"""
