"""The example sheet: each test image's input and both disparities side by side, row by row."""

import numpy as np
import pytest
from PIL import Image

from mal_jax.studies import example_sheet


def _write_tiles(folder, num_images):
    """Tile (index, column) is filled with the value 10 * index + column + 1."""
    for index in range(num_images):
        for column, name in enumerate(example_sheet.COLUMNS):
            tile = np.full((4, 6, 3), 10 * index + column + 1, np.uint8)
            Image.fromarray(tile).save(folder / f"{index:04d}_{name}.png")


def test_sheet_puts_images_in_rows_and_networks_in_columns(tmp_path):
    _write_tiles(tmp_path, 2)
    sheet = example_sheet.example_sheet(str(tmp_path), 2)
    assert sheet.shape == (8, 18, 3)
    # Block (row i, column c) holds tile (i, c): input, teacher, student.
    blocks = sheet[::4, ::6, 0]
    np.testing.assert_array_equal(blocks, [[1, 2, 3], [11, 12, 13]])
    # Only the images asked for.
    assert example_sheet.example_sheet(str(tmp_path), 1).shape == (4, 18, 3)


def test_cli_writes_the_png_and_names_a_missing_tile(tmp_path):
    images = tmp_path / "eval_images"
    images.mkdir()
    _write_tiles(images, 1)
    out = tmp_path / "sheet.png"
    example_sheet.main([str(tmp_path), str(out), "--num_images", "1"])
    np.testing.assert_array_equal(np.asarray(Image.open(out))[::4, ::6, 0], [[1, 2, 3]])
    with pytest.raises(FileNotFoundError, match="0001_input.png"):
        example_sheet.main([str(tmp_path), str(out), "--num_images", "2"])
