"""keel's benchmarks: what keel adds to a user's time and tokens, measured against in-run baselines.

``python -m bench`` (``make bench``) drives the real bot process through the fake Telegram and
Anthropic servers on 127.0.0.1 and writes ``bench/results/latest.json`` and ``latest.md``;
``--quick`` (``make bench-quick``) shrinks repeats and sizes and writes ``quick.json``/``quick.md``.
Numbers are medians over repeats, shown beside a baseline measured in the same run. Nothing here is
asserted in a test: a benchmark reports, it does not pass or fail.
"""
