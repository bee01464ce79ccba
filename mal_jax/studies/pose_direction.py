"""Where a trained pose network points: the direction and length of its translations against
the embedded scenes' true camera motion.

    python -m mal_jax.studies.pose_direction WORKDIR [WORKDIR ...] [--num_samples 16]

For each training workdir (latest checkpoint) it prints, per source frame, the median cosine
between the predicted and the true translation (1: along the true motion; the embedded camera
drives forward), their spread over the samples, the median length ratio and the mean predicted
direction. The velocity loss pins the length only, so a run can have the right speed in a wrong
direction; runs trained with the velocity loss also log ``pose_direction_cosine``.
"""

from __future__ import annotations

import argparse

import numpy as np

from mal_jax.core.frames import FRAME_INDEX, SOURCE_FRAMES
from mal_jax.data import synthetic
from mal_jax.mal.objective import translation_cosines
from mal_jax.train.checkpointing import load_inference
from mal_jax.train.forward import predict_poses

# Training samples spread over the embedded split's sequences.
SAMPLE_STRIDE = 37


def translation_report(cam_T_cam: dict, true_cam_T_cam: np.ndarray) -> dict:
    """``{frame_id: {cosine_median, cosine_min, cosine_max, length_ratio, mean_direction}}``
    of predicted ``{frame_id: (B, 4, 4)}`` against true (B, F, 4, 4) poses."""
    cosines = np.asarray(translation_cosines(cam_T_cam, np.asarray(true_cam_T_cam)))
    report = {}
    for row, frame_id in enumerate(SOURCE_FRAMES):
        predicted = np.asarray(cam_T_cam[frame_id])[:, :3, 3]
        lengths = np.linalg.norm(predicted, axis=-1)
        known = np.linalg.norm(np.asarray(true_cam_T_cam)[:, FRAME_INDEX[frame_id], :3, 3],
                               axis=-1)
        report[frame_id] = {
            "cosine_median": float(np.median(cosines[row])),
            "cosine_min": float(cosines[row].min()), "cosine_max": float(cosines[row].max()),
            "length_ratio": float(np.median(lengths / known)),
            "mean_direction": [round(float(v), 2)
                               for v in np.mean(predicted / lengths[:, None], 0)]}
    return report


def pose_direction(workdir: str, num_samples: int = 16) -> dict:
    """:func:`translation_report` of ``workdir``'s latest pose network on ``num_samples``
    training samples of the embedded scenes (at the run's image size)."""
    inference = load_inference(workdir)
    samples = [synthetic.render_sample("train", i * SAMPLE_STRIDE, height=inference.height,
                                       width=inference.width) for i in range(num_samples)]
    frames = np.stack([s["frames"] for s in samples])
    cam_T_cam, _, _, _ = predict_poses(inference.model, inference.variables, frames, train=False)
    return translation_report(cam_T_cam, np.stack([s["cam_T_cam"] for s in samples]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--num_samples", type=int, default=16)
    args = parser.parse_args(argv)
    for workdir in args.workdirs:
        for frame_id, row in pose_direction(workdir, args.num_samples).items():
            print(f"{workdir} frame {frame_id:+d}: cosine {row['cosine_median']:.3f} "
                  f"[{row['cosine_min']:.2f}, {row['cosine_max']:.2f}], length ratio "
                  f"{row['length_ratio']:.2f}, mean direction {row['mean_direction']}")


if __name__ == "__main__":
    main()
