"""Studies: the MAL oracle and its variants, the trained ablation, benchmarks."""
