"""The benchmarks: one runner, `python -m benchmarks SECTION [options]` from the repository root (see
`benchmarks/__main__.py` for the sections). Each section is a module of this package with `main(argv=None)`; it
can also be run on its own as `python -m benchmarks.MODULE`. Modules import each other as `benchmarks.x`, so no
`sys.path` edits: run from the repository root (or with it on `PYTHONPATH`)."""
