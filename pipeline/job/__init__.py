"""The masking job: a plan from the items' metadata (scenes, grids, blocks), the tasks a worker runs per block,
and the execution that keeps the books."""
