"""Training jobs: DiLoCo rounds of H local AdamW steps per task, robust aggregation, outer Nesterov step,
versioned content-addressed checkpoints. See docs/training.md.

Modules: `spec` (job spec), `data` (tokenise, shard), `model`, `aggregation`, `outer`, `rounds` (close
decision), `checkpoints` (store, `apply_round`), `export` (HF dir), `reference` (single-process DiLoCo),
`local` (distributed path in one process), `verification` (`compare_updates`). The worker's inner loop is
`worker.training`.
"""
