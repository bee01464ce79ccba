"""The progress bar used by evaluation, prediction, the oracle and the ablation: items pass
through unchanged, a tracked loop inside another shares the one live display, and the final
state (done/total) reaches stderr."""

import pytest

from mal_jax.eval import progress


def test_items_pass_through_and_the_final_count_is_shown(capsys):
    assert list(progress.track(iter(range(5)), 5, "eval synthetic")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "eval synthetic" in err and "5/5" in err


def test_nested_loops_share_one_display_and_clean_up():
    seen = []
    for row in progress.track(["a", "b"], 2, "ablation rows"):
        for batch in progress.track(range(3), 3, "eval"):  # rich allows one live display
            seen.append((row, batch))
        assert len(progress._running) == 1 and len(progress._running[0].task_ids) == 1
    assert seen == [(r, b) for r in "ab" for b in range(3)]
    assert progress._running == []


def test_an_error_inside_the_loop_propagates_and_closes_the_display():
    with pytest.raises(RuntimeError, match="boom"):
        for item in progress.track(range(3), 3, "predict"):
            if item == 1:
                raise RuntimeError("boom")
    assert progress._running == []
    assert list(progress.track([1, 2], None, "unknown total", disable=True)) == [1, 2]
