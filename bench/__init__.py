"""statem's benchmarks: figures next to a raw SQL baseline, never assertions.

``python -m bench [--quick]`` runs them all (``make bench``); ``python -m bench.steps``,
``bench.executor``, ``bench.timers`` and ``bench.memory`` run one each. See README.md.
"""
