"""The benchmarks of SPEC §10 (``make bench``): real processes on this machine, figures to docs/benchmarks.md."""
