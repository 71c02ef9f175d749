#!/bin/bash
# `wsss pipeline` (all stages of one supervision type) as a one-GPU SLURM job. The pipeline runner is a single
# process, so it is not run under DDP; for multi-GPU training run the stages one by one with slurm_fit.sh and the
# per-stage configs (cam.yaml, affinity.yaml, ...) instead.
#
#   sbatch experiments/cluster/slurm_pipeline.sh experiments/voc2012/pipeline_image.yaml
#   sbatch experiments/cluster/slurm_pipeline.sh experiments/voc2012/pipeline_box.yaml --out runs/voc2012/pipeline
#
# Rerunning the same line resumes: complete stages are skipped (their stage.json exists) and an interrupted
# training stage restarts from its checkpoints/last.ckpt. The CPU-bound steps (dense CRF for the affinity
# labels, GrabCut box masks) run in this process, hence the CPUs.
#SBATCH --job-name=wsss-pipeline
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
CONFIG=${1:?usage: sbatch experiments/cluster/slurm_pipeline.sh PIPELINE_CONFIG [--out DIR]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
# source .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

srun wsss pipeline "$CONFIG" "$@"
