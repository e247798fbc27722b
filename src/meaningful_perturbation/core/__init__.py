"""Differentiable building blocks: perturbations, mask parameterisations, objective terms, the loop."""
