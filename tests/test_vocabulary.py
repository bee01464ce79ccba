"""One vocabulary for the networks: the port's code says teacher (single-frame network), student
(multi-frame network) and pose. The reference's names (``mono_encoder``, ``mono_disp``, the
``multi_frame`` model, ...) belong in ``mal_jax/port/`` only, where the converter and the
golden-file readers map them explicitly; this test fails when they creep back elsewhere."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
# Where the port's own vocabulary must hold: every source file but the reference's side.
SCANNED = ("mal_jax", "configs", "train.py", "eval.py")
EXEMPT = ("mal_jax/port/",)
# Identifiers and strings of the old vocabularies (plain English "multi-frame" is fine).
OLD_NAMES = re.compile(r"mono_\w*|\w*multi_frame\w*|\w*single_frame\w*", re.IGNORECASE)
# Reference source files cited in prose: their names are not ours to change.
CITATIONS = {"mono_dataset"}


def _source_files():
    for entry in SCANNED:
        path = REPO / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if not relative.startswith(EXEMPT):
                yield relative, file


def old_vocabulary(text: str) -> list[tuple[int, str]]:
    """(line number, word) of every old-vocabulary name in ``text``."""
    return [(number, match.group(0))
            for number, line in enumerate(text.splitlines(), start=1)
            for match in OLD_NAMES.finditer(line) if match.group(0) not in CITATIONS]


def test_the_pattern_catches_old_names_and_spares_prose():
    assert old_vocabulary('x = outputs["mono_disp"]\nmodel.multi_frame(v)\nSINGLE_FRAME = 1') \
        == [(1, "mono_disp"), (2, "multi_frame"), (3, "SINGLE_FRAME")]
    assert old_vocabulary("the student (multi-frame network) and the single-frame teacher; "
                          "Monodepth2's auto-mask; ManyDepth's mono_dataset") == []


def test_no_old_network_names_outside_the_port():
    files = list(_source_files())
    assert len(files) > 40 and any(name == "mal_jax/models/manydepth.py" for name, _ in files)
    found = [f"{name}:{number}: {word}" for name, file in files
             for number, word in old_vocabulary(file.read_text(encoding="utf-8"))]
    assert not found, ("old network names outside mal_jax/port/ (say teacher, student, pose): "
                       + "; ".join(found))
