"""Entry points: training, checkpoint evaluation, Slurm job rendering, results views."""
