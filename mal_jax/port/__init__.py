"""Porting from the PyTorch reference: weight conversion, golden files, parity."""
