"""The benchmarks of torch_featureviz, one per question (see ``benchmarks/README.md``).

Run each from the repository root as a module, e.g. ``python -m benchmarks.bench_capture
--quick``; they share :mod:`benchmarks._harness`. Nothing here is part of the installed package,
and nothing here imports the tests.
"""
