"""Worker-only modules: nothing here runs in the API (it imports crewai through ``crews.runner``).

``process`` runs the workers of a process (``serve``), ``runtime`` is what its
executions share, ``execution`` is one run of a task, with ``stopping``,
``progress`` and ``settle`` for how it is stopped, what it reports and how it
ends; ``leases`` fence executions and recover tasks whose worker died.
"""

from jobs.worker.process import serve

__all__ = ["serve"]
