"""The trainer side: read a run, turn rows into chat messages, write a dataset card. Imports
only the core, so ``pip install proxyqa`` (pyarrow, pydantic, fsspec, numpy) is enough."""
