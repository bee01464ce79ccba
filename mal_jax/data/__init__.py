"""Datasets: embedded procedural scenes, KITTI raw, Cityscapes, instance masks, tf.data."""
