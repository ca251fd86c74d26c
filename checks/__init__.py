"""Acceptance checks that are not benchmarks: `python -m checks.gpu_check` (one prepared run on a lent GPU) and
`python -m checks.parity_report` (our logits against the reference package, per mode)."""
