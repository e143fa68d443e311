# distil with its pinned dependencies, for GKE (`xpk workload create --docker-image ...`, what `distil sweep
# --launcher xpk` prints) and SLURM clusters with containers (`distil sweep --launcher slurm --container IMAGE`).
# JAX's accelerator extra is a build argument: cuda12 (GPU nodes, the default) or tpu (TPU slices).
#
#   docker build -t us-docker.pkg.dev/PROJECT/REPO/distil:0.1.0-cuda12 .
#   docker build --build-arg ACCELERATOR=tpu -t us-docker.pkg.dev/PROJECT/REPO/distil:0.1.0-tpu .
#   docker push ...
#
# The image holds the package only (configs and the embedded data are package data); runs write to the workdir
# they are given (a mounted bucket or shared file system), never into the image.
FROM python:3.11.11-slim-bookworm

ARG ACCELERATOR=cuda12
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/distil
COPY setup.py setup.cfg README.md ./
COPY distil ./distil
COPY configs ./configs
RUN python -m pip install ".[${ACCELERATOR},gcs]" && python -m distil --help > /dev/null

WORKDIR /workspace
CMD ["distil", "--help"]
