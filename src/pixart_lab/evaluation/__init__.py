"""Evaluation of trained stages: what they generate and what they cost."""
