"""Orchestration (installed as ``proxyqa.pipeline``): the plan of steps, its Ray and local
executors, listing, the run's commit and ledger, the CLI. Imports stages and core."""

if __name__ == "pipeline":
    # Run from the repo root, Python would find this folder as a top-level `pipeline`: a second
    # copy of the modules beside the installed ones (and a name a user's own `pipeline.py` takes).
    raise ImportError("proxyqa's pipeline/ folder installs as `proxyqa.pipeline`: import that instead")
