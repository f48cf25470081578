"""Crew definitions: typed inputs, prompts in YAML, and the code that runs a crew.

Only ``crews.runner`` imports crewai; everything else here is light enough for
the API process, which needs the input structs and the registry but never runs
a crew.
"""
