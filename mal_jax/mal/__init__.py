"""MAL, the Motion-Aware Loss: temporal hints, distillation hints, loss balancing."""
