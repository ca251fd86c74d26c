"""One module per section of `run_all.py`; each has `run(ctx)` (measure, print, record) and may have `plot(ctx)`."""
