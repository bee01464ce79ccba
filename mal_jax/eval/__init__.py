"""Evaluation: protocols, metrics, depth inference, prediction and output images."""
