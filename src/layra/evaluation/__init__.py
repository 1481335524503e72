"""Measure learning and retention: bits per byte, lm-eval benchmarks, a results store, reports.

    layra eval bpb models/gl --text glg=heldout/gl.txt --text eng=heldout/en.txt
    layra eval tasks models/gl --tasks xnli,xstorycloze --langs eng,glg
    layra report results --base PT --new glg --out report/

Modules: ``langs`` (language codes), ``bpb`` (bits per byte, pure computation),
``modelspec`` (what MODEL / MODEL+VEC:λ / a run directory means), ``tasks``
(lm-evaluation-harness), ``store`` (one JSON record per evaluation), ``run``
(evaluate and record, skipping what is cached), ``report`` (records → tables) and
``plots`` (tables → PNG).
"""
