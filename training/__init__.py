"""Training, releasing and comparing the shipped Griffin (training/README.md). Run the scripts as modules from the
repository root, e.g. `python -m training.train --arch griffin`; they import each other as `training.x`."""
