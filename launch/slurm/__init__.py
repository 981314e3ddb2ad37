"""Slurm sbatch templates, their renderer and the array-job index runner."""
