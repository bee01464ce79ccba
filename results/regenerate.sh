#!/usr/bin/env bash
# Regenerates every number of the README's Results section into results/, in the README's
# order: the MAL oracle and its variants, the depth sweep, the speed benchmarks, mixed
# precision, README command 1 (the default run), the converged start, the comparison rerun
# from it, and the check of whether its student reads its cost volume. Run from the repository root with the project installed:
#
#     bash results/regenerate.sh RUNS [GOLDEN_DIR]
#
# RUNS holds the training runs (outside git; hours of them on a 2-core CPU: the converged
# start alone is ~2.5 h per seed). Every training step resumes from its checkpoints, so
# rerunning the script, in this session or a later one, continues where it stopped; the
# studies without training simply run again. GOLDEN_DIR defaults to ../shared/golden.
# Not covered: the PyTorch reference's own step time in the Speed table, which needs the
# reference code (not part of this project).
set -euo pipefail
runs=${1:?usage: bash results/regenerate.sh RUNS [GOLDEN_DIR]}
golden=${2:-../shared/golden}
mkdir -p "$runs" results/default_run

# MAL oracle (96x320 and 64x192) and the depth sweep.
python -m mal_jax.studies.oracle --json results/oracle.json
python -m mal_jax.studies.oracle --replace --json results/oracle_replace.json
python -m mal_jax.studies.oracle --frame_t_shifts --json results/oracle_frame_t_shifts.json
python -m mal_jax.studies.oracle --height 64 --width 192 --json results/oracle_64x192.json
python -m mal_jax.studies.oracle_depth --json results/oracle_depth.json

# Speed and mixed precision.
python -m mal_jax.studies.bench --height 96 --width 320 --batch_size 4 --steps 5 --no_mal \
  --compile_twice --profile --json results/bench_manydepth.json
python -m mal_jax.studies.bench --height 96 --width 320 --batch_size 4 --steps 5 \
  --json results/bench_mal.json
python -m mal_jax.studies.mixed_precision "$golden/manydepth_mal_96x320.npz" \
  --json results/mixed_precision.json

# README command 1, its evaluation and example sheet.
python train.py --config=configs/default.py --workdir="$runs/default_run"
cp "$runs/default_run/eval_results.json" "$runs/default_run/eval_results.md" results/default_run/
python -m mal_jax.studies.example_sheet "$runs/default_run" results/default_run/depth_examples.png

# The converged start (both seeds), then the comparison fine-tuning each seed's own start.
python -m mal_jax.studies.converge --config=configs/converge.py --workdir="$runs/converge" \
  --results_dir=results
python -m mal_jax.studies.ablation --config=configs/ablation.py --workdir="$runs/comparison" \
  --config.ablation.start_workdir="$runs/converge/seed_{seed}" \
  --config.ablation.pretrain_seed=-1 --results_dir=results

# Does the student read its cost volume? The starts and four comparison rows, both seeds.
start="$runs/converge/seed_"; row="$runs/comparison"
python -m mal_jax.studies.cost_volume_use --config=configs/ablation.py \
  --runs="start_seed0=${start}0,start_seed1=${start}1,control_seed0=$row/baseline_scale0/seed_0,control_seed1=$row/baseline_scale0/seed_1,temporal_seed0=$row/temporal/seed_0,temporal_seed1=$row/temporal/seed_1,mal_seed0=$row/mal/seed_0,mal_seed1=$row/mal/seed_1,mal_student_hints_seed0=$row/mal_student_hints/seed_0,mal_student_hints_seed1=$row/mal_student_hints/seed_1" \
  --parallax_sizes 96x320,192x640 --parallax_strides 2,3 --json results/cost_volume_use.json \
  --markdown results/cost_volume_use.md

# Pilot for #10: frames 4 apart (data.frame_stride=4: the parallax of 192x640 at 64x192), one
# seed from random weights, and consecutive frames with the same seed and steps. Does the
# student read its cost volume then? Studied at step 1100 (both), then stride 4 at step 2200.
# The pose prior is per frame interval: 4 frames at ~1 m per frame.
pilot() {  # pilot STRIDE EPOCHS [STUDY FLAGS]: train (resumes) to EPOCHS x 1100 steps, study it
  local stride=$1 epochs=$2 out=results/stride_pilot/stride$1
  shift 2
  python -m mal_jax.studies.converge --config=configs/converge.py \
    --config.data.frame_stride="$stride" --config.model.init_forward_motion="$stride.0" \
    --config.converge.seeds="(0,)" --config.training.num_epochs="$epochs" \
    --workdir="$runs/pilot_stride$stride" --results_dir="$out"
  python -m mal_jax.studies.cost_volume_use --config=configs/converge.py \
    --config.data.frame_stride="$stride" --runs="stride${stride}_step$((epochs * 1100))=$runs/pilot_stride$stride/seed_0" \
    --json "$out/cost_volume_use_step$((epochs * 1100)).json" \
    --markdown "$out/cost_volume_use_step$((epochs * 1100)).md" "$@"
}
pilot 1 1 --parallax_sizes 96x320,192x640 --parallax_strides 2,4
pilot 4 1
pilot 4 2
