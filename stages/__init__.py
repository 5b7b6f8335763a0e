"""Stage classes (installed as ``proxyqa.stages``): plain callables ``__call__(batch) -> batch``
with no Ray import. They import the core and the model wrappers, nothing above them."""

if __name__ == "stages":
    # Run from the repo root, Python would find this folder as a top-level `stages`: a second
    # copy of the modules beside the installed ones (and a name a user's own `stages.py` takes).
    raise ImportError("proxyqa's stages/ folder installs as `proxyqa.stages`: import that instead")
