"""The dataset registry and the config check: lookups, the unknown-name error, sources built
from a config (missing-neighbour policy included), and every bad config or path failing in
one line that names the field and the value, before a workdir or result is written."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import test as test_config
from mal_jax.data import pipeline, registry
from mal_jax.eval import presets
from mal_jax.studies.kitti_tree import write_kitti_like_tree

DRIVE = "2011_09_26/2011_09_26_drive_0001_sync"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lookups_and_spec_attributes():
    assert sorted(registry.DATASETS) == ["cityscapes", "kitti", "synthetic"]
    synthetic, kitti, city = map(registry.dataset_spec, ("synthetic", "kitti", "cityscapes"))
    assert synthetic.has_true_poses and not synthetic.masks_on_disk and synthetic.layout is None
    assert not kitti.has_true_poses and kitti.masks_on_disk and not kitti.layout.gt_is_folder
    assert not city.has_true_poses and city.masks_on_disk and city.layout.gt_is_folder
    assert kitti.eval_presets == ("kitti_eigen", "kitti_eigen_mal")
    assert city.eval_presets == ("cityscapes", "cityscapes_mal")
    # Every preset a dataset names exists, and every preset belongs to some dataset.
    named = [p for spec in registry.DATASETS.values() for p in spec.eval_presets]
    assert sorted(named) == sorted(presets.PRESETS)


def test_unknown_dataset_is_one_line_listing_the_known_ones():
    with pytest.raises(registry.ConfigError) as error:
        registry.dataset_spec("kity")
    assert str(error.value) == (
        "config.data.dataset='kity': unknown dataset; known: cityscapes, kitti, synthetic"
    )
    config = test_config.get_config()
    config.data.dataset = "KITTI"
    with pytest.raises(registry.ConfigError, match=r"^config\.data\.dataset='KITTI': unknown"):
        registry.train_source(config)


def test_synthetic_sources_from_the_config():
    config = test_config.get_config()
    train = registry.train_source(config)
    evaluation = registry.eval_source(config, 32, 64)
    assert (train.name, train.num_samples) == ("synthetic_train", 8)
    assert (evaluation.name, evaluation.num_samples) == ("synthetic_test", 4)
    assert evaluation.signature["frames"][1] == (2, 32, 64, 3)
    assert registry.eval_source(config).signature["frames"][1] == (2, 64, 96, 3)
    assert registry.check_config(config) is registry.DATASETS["synthetic"]



@pytest.mark.parametrize("stride", [0, 5])
def test_synthetic_frame_stride_outside_the_sequence_is_one_line(stride):
    config = test_config.get_config()
    config.data.frame_stride = stride
    with pytest.raises(registry.ConfigError, match=r"^config\.data\.frame_stride: synthetic: "
                       r"frame_stride must be an integer in \[1, 4\], got "):
        registry.check_config(config)


@pytest.fixture(scope="module")
def kitti_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kitti"))
    split = write_kitti_like_tree(root, frames_per_drive=4, image_size=(40, 100))
    edge = os.path.join(root, "edge.txt")
    with open(edge, "w") as handle:
        handle.write(f"{DRIVE} 0 l\n{DRIVE} 1 l\n")  # frame 0 has no frame -1
    gt = os.path.join(root, "gt.npz")
    maps = np.empty(2, object)
    maps[:] = [np.ones((40, 100), np.float32), np.ones((40, 100), np.float32)]
    np.savez(gt, data=maps)
    os.makedirs(os.path.join(root, "masks"))
    return root, split, edge, gt


def _kitti_config(tree):
    root, split, edge, gt = tree
    config = test_config.get_config()
    config.data.dataset = "kitti"
    config.data.img_ext = ".jpg"
    config.data.root = root
    config.data.train_split_file = split
    config.data.eval_split_file = edge
    config.data.gt_depth_file = gt
    config.data.masks_root = os.path.join(root, "masks")
    config.data.height, config.data.width = 32, 64
    config.evaluation.protocol = "kitti_eigen"
    return config


def test_kitti_sources_follow_the_missing_neighbour_policy(kitti_tree):
    config = _kitti_config(kitti_tree)
    config.data.augment = False
    config.data.train_split_file = config.data.eval_split_file  # lines at frames 0 and 1
    config.data.masks_root = ""
    assert registry.check_config(config, training=False).name == "kitti"
    first = next(pipeline.train_batches(registry.train_source(config), batch_size=2, num_epochs=1))
    index = int(np.flatnonzero(first["index"] == 0)[0])
    np.testing.assert_array_equal(first["frames"][index, 0], 0.0)  # black frame -1
    assert first["frames"][1 - index, 0].max() > 0
    evaluation = registry.eval_source(config)
    assert evaluation.depth_gt_shapes == ((40, 100), (40, 100))
    config.data.missing_neighbour = "error"
    for source in (registry.train_source(config), registry.eval_source(config)):
        with pytest.raises(FileNotFoundError, match=r"-000000001\.jpg: neighbour image missing"):
            list(pipeline.eval_batches(source, batch_size=2))


def _set(config, dotted: str, value):
    section, field = dotted.split(".")
    config[section][field] = value


BAD_FIELDS = [
    ("data.dataset", "kity", r"config\.data\.dataset='kity': unknown dataset; known: "),
    ("data.height", 100, r"config\.data\.height=100: must be a positive multiple of 32"),
    ("data.width", 0, r"config\.data\.width=0: must be a positive multiple of 32"),
    ("data.missing_neighbour", "static", r"config\.data\.missing_neighbour='static': expected "
     r"one of black, error"),
    ("evaluation.protocol", "synthetic", r"config\.evaluation\.protocol='synthetic': dataset "
     r"'kitti' is evaluated with one of kitti_eigen, kitti_eigen_mal"),
    ("evaluation.batch_size", 0, r"config\.evaluation\.batch_size=0: must be at least 1"),
    ("data.root", "", r"config\.data\.root='': dataset 'kitti' needs a folder here"),
    ("data.root", "/no/such/root", r"config\.data\.root='/no/such/root': folder missing"),
    ("data.train_split_file", "/no/s.txt", r"config\.data\.train_split_file='/no/s\.txt': file "
     r"missing"),
    ("data.eval_split_file", "", r"config\.data\.eval_split_file='': dataset 'kitti' needs a "
     r"file here \(--config\.data\.eval_split_file=\.\.\.\)"),
    ("data.gt_depth_file", "/no/gt.npz", r"config\.data\.gt_depth_file='/no/gt\.npz': file "
     r"missing"),
    ("data.masks_root", "/no/masks", r"config\.data\.masks_root='/no/masks': folder missing"),
    ("data.masks_root", "", r"config\.data\.masks_root='': MAL's temporal hints \(config\.mal"
     r"\.temporal, config\.mal\.main_temporal\) need instance masks on dataset 'kitti'"),
    ("data.frame_stride", 2, r"config\.data\.frame_stride=2: only the embedded synthetic scenes "
     r"take a stride \(dataset 'kitti' reads consecutive frames\)"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_each_bad_field_is_one_line_naming_it(kitti_tree, field, value, message):
    config = _kitti_config(kitti_tree)
    assert registry.check_config(config).name == "kitti"
    _set(config, field, value)
    with pytest.raises(registry.ConfigError, match=f"^{message}") as error:
        registry.check_config(config)
    assert "\n" not in str(error.value)


def test_malformed_split_names_field_file_and_line(kitti_tree, tmp_path):
    config = _kitti_config(kitti_tree)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{DRIVE} 1 l\n{DRIVE} one l\n")
    config.data.eval_split_file = str(bad)
    with pytest.raises(registry.ConfigError,
                       match=rf"^config\.data\.eval_split_file='{bad}': {bad}:2: expected"):
        registry.check_config(config)


def test_masks_needed_only_for_temporal_hints_in_training(kitti_tree):
    config = _kitti_config(kitti_tree)
    config.data.masks_root = ""
    registry.check_config(config, training=False)  # evaluation reads no masks
    config.mal.temporal = False
    config.mal.main_temporal = True  # student hints (an option) need masks too
    with pytest.raises(registry.ConfigError, match="masks_root=''"):
        registry.check_config(config)
    config.mal.main_temporal = False
    registry.check_config(config)  # distillation alone needs no masks
    config.data.train_split_file = "/no/train.txt"
    registry.check_config(config, training=False)  # evaluation needs no training split


def test_cityscapes_gt_must_be_a_folder(kitti_tree, tmp_path):
    config = _kitti_config(kitti_tree)
    config.data.dataset = "cityscapes"
    config.evaluation.protocol = "cityscapes"
    split = tmp_path / "city.txt"
    split.write_text("ulm ulm_000064_000012\n")
    config.data.train_split_file = config.data.eval_split_file = str(split)
    with pytest.raises(registry.ConfigError,
                       match=r"^config\.data\.gt_depth_file='.*gt\.npz': folder missing"):
        registry.check_config(config)


@pytest.mark.parametrize(("field", "value"), [("data.height", 100),
                                              ("data.gt_depth_file", "/no/gt.npz"),
                                              ("data.masks_root", "")])
def test_training_refuses_before_writing_anything(kitti_tree, tmp_path, field, value):
    from mal_jax.train.trainer import train_and_evaluate

    config = _kitti_config(kitti_tree)
    _set(config, field, value)
    workdir = tmp_path / "run"
    with pytest.raises(registry.ConfigError, match=f"config.{field}="):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_eval_command_refuses_in_one_line_before_loading_or_writing(tmp_path):
    workdir = tmp_path / "no_run_yet"
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "eval.py", "--config=configs/test.py", f"--workdir={workdir}",
         f"--out={out}", "--config.data.height=100"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "eval.py: config.data.height=100: must be a positive multiple of 32 (the encoders "
        "downsample by 32)")
    assert "Traceback" not in result.stderr
    assert not out.exists() and not workdir.exists()
