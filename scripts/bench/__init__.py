"""looplab's benchmark (`make bench`): every figure a ratio of contenders run side by side.

    make bench                              # the full run: docs/benchmarks.md and .json
    make bench ARGS=--quick                 # a smoke run, written to outputs/bench-quick
    make bench ARGS='--only loop console'   # some groups, written to outputs/bench-only
    make bench ARGS='--render-from docs/benchmarks.json'   # rewrite the .md, measure nothing

Shared machines are noisy, so no figure is an absolute time: each row interleaves its
contenders (A B B A ...), takes the ratio within each repeat, and reports the median with min
and max. Reasons for a missed goal are computed from the same run's numbers. `harness` holds
the row and the rendering; each other module is one group of rows and reads on its own.
"""
