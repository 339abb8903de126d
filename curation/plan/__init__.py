"""Planning a run before it runs: the stage graph's cost model (`cost`, `rates`, `stage_hours`,
`scale_model`) and `lvd plan`'s estimate (`planner`).
"""
