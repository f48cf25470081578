"""Crew definitions: one folder per crew (prompts in YAML, typed input and plan), and the shared runner.

``crews.runner``, ``crews.tracing`` and ``crews.demo_llm`` import crewai; only
worker processes import them, so the API (which needs the input structs and
the crews' plans) never pays crewai's import time or memory.

crewai reads its environment when it is imported: it is set here, once, so
that no import order can let crewai start with telemetry on (it calls home),
its tracing on, its version check on, or its storage somewhere unwritable.
"""

import os
import tempfile
from pathlib import Path

os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["CREWAI_TRACING_ENABLED"] = "false"
os.environ["CREWAI_DISABLE_VERSION_CHECK"] = "true"
os.environ.setdefault("CREWAI_STORAGE_DIR", str(Path(tempfile.gettempdir()) / "agentfarm-crewai"))
