"""Profiling helpers beyond :mod:`pipeit.profiler`: the generated-layer sweep."""
