"""The startup device line, and the warning when a GPU is visible but JAX runs on the CPU."""

import logging

import jax

from mal_jax.train import distributed


def test_device_line_and_warning_for_an_unused_gpu(monkeypatch, caplog):
    assert jax.default_backend() == "cpu"  # the tests run on the CPU
    monkeypatch.setattr(distributed, "gpu_visible", lambda: True)
    with caplog.at_level(logging.INFO):
        distributed.report_devices()
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == (f"training on {jax.device_count()} cpu device(s) (cpu), "
                           f"{jax.local_device_count()} local to process 0 of 1")
    assert len(messages) == 2 and "a GPU is visible on this machine but JAX runs on the CPU" in (
        messages[1]) and "pip install -e '.[cuda]'" in messages[1]
    caplog.clear()
    monkeypatch.setattr(distributed, "gpu_visible", lambda: False)
    with caplog.at_level(logging.INFO):
        distributed.report_devices()
    assert len(caplog.records) == 1  # no GPU: the device line only
