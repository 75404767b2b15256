"""`python -m bench`: the two tiers measured on this machine, mode by mode (see README, "Benchmark").

Modules: `workload` (fixed images and search settings), `wire` (call and byte accounting), `serving_tier`
(the local stand-in as a subprocess), `modes` (the six ways of making a meme), `seed_replica` (the
SavedModel mode 1 is served from over REST JSON), `load` (closed-loop load generator), `report` (table,
targets, JSON, plot), `runner` (one whole run), `profiling` (py-spy).
"""
