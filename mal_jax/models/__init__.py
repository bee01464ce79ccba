"""Flax (linen, NHWC) networks of ManyDepth: ResNet encoders, the matching encoder, decoders."""
