#!/bin/bash
# `wsss pipeline` (all stages of one supervision type) on N GPUs of M SLURM nodes, one task per GPU. Every task
# runs the same pipeline: the training stages train under DDP across all tasks (Lightning reads the SLURM
# variables), the prediction and CPU stages (CAMs, affinity labels, random walk, box masks, scores) split the
# images across the tasks, and rank 0 writes each stage's stage.json and the summary.json. The output folder
# (the config's `out`, or --out) must be on a file system every node sees.
#
#   sbatch experiments/cluster/slurm_pipeline.sh experiments/voc2012/pipeline_image.yaml           # 8 GPUs, 1 node
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 experiments/cluster/slurm_pipeline.sh \
#       experiments/voc2012/pipeline_box.yaml --out runs/voc2012/pipeline                           # 8 GPUs, 2 nodes
#   sbatch --ntasks-per-node=4 --gpus-per-node=4 experiments/cluster/slurm_pipeline.sh CONFIG       # 4 GPUs
#
# The voc2012 / coco2014 pipeline configs are sized for 8 GPUs (per-process batch 2, the recipes' global 16);
# on G GPUs set data.batch_size to 16 / G as their header says. Rerunning the same line resumes, with the same
# or another number of GPUs: complete stages are skipped (their stage.json exists), an interrupted training
# stage restarts from its checkpoints/last.ckpt, a prediction or CPU stage from the images already written.
# A task that fails with an error stops the others with its message; --kill-on-bad-exit makes srun stop them
# when a task dies without one (out of memory, a signal). There is no --signal / --requeue: SIGUSR1 arriving in a
# CPU stage would end the job; chain jobs longer than the time limit with sbatch --dependency=afterany:JOBID.
#SBATCH --job-name=wsss-pipeline
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
CONFIG=${1:?usage: sbatch experiments/cluster/slurm_pipeline.sh PIPELINE_CONFIG [--out DIR]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"               # submit from the repository root: config paths are relative to it
# source .venv/bin/activate               # the environment where `pip install -e .` was run
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

srun --kill-on-bad-exit=1 wsss pipeline "$CONFIG" "$@"
