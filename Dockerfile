# One image for every LLM OS service; compose.yaml picks the module each container runs.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LLMOS_DATA_DIR=/data LLMOS_LOG_FORMAT=json

COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
RUN pip install --no-cache-dir --no-build-isolation --no-deps -e . \
 && python tools/gen_protos.py \
 && useradd --uid 10001 --create-home llmos \
 && mkdir -p /data && chown llmos /data

USER llmos
VOLUME ["/data"]
