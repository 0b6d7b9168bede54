"""Noise schedule, IDDPM learned-variance objective and samplers."""
