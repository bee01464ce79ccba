"""Core geometry and photometric losses shared by training, MAL and the studies."""
