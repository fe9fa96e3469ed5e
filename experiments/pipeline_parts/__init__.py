"""The experiments of ``python -m experiments.pipeline`` (one module each; see that module).

Each module has ``NAME``, ``DESCRIPTION`` (what it shows, for the report) and
``run(ctx, out) -> dict`` (writes ``results.csv`` + ``summary.json`` and its own tables and
figures into ``out``; returns what the report paragraph needs: ``figures`` (file names in
``out``), ``tables`` and ``notes``).
"""
