"""The core every other layer builds on: config models, the row schema, run-layout names,
storage, errors. It imports nothing else of the project."""
