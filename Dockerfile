# One image for the four functions; FUNCTION_TARGET/FUNCTION_SOURCE pick one
# (the Knative Services in knative/ set both).
#
#   docker build -t registry.example.com/iot/iot-telemetry:0.1.0 .
#   docker run --rm -p 8080:8080 -e FUNCTION_TARGET=query \
#     -e FUNCTION_SOURCE=/app/functions/query.py -e MONGO_URL=... IMAGE
#
# Runs as uid 10001 with a read-only root filesystem: only /tmp must be
# writable (gunicorn's worker heartbeat), which the manifests mount as an emptyDir.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a virtualenv ------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The package: the library in functions/iot_telemetry, and local/ which
# pyproject.toml installs as iot_telemetry.local (the local runner).
COPY pyproject.toml README.md ./
COPY functions/ functions/
COPY local/ local/
# pip compiles the installed modules to bytecode (its default): the running
# container cannot write .pyc files next to read-only sources.
RUN pip install .

# ---- runtime: the virtualenv and the entry modules, nothing else ------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 iot \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin iot
COPY --from=build /opt/venv /opt/venv
# Only the thin entry modules: the library is installed in the virtualenv.
COPY --from=build /src/functions/*.py /app/functions/
RUN python -m compileall -q /app/functions
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FUNCTION_TARGET=ingest \
    FUNCTION_SOURCE=/app/functions/ingest.py \
    PORT=8080
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# functions-framework reads --target, --source and --port from FUNCTION_TARGET,
# FUNCTION_SOURCE and PORT, and picks the serving mode from the function: ingest,
# aggregate and alert are `functions_framework.aio` functions, served in its ASGI
# mode (gunicorn with one uvicorn worker, httptools and uvloop); query is a
# Flask function on gunicorn's threads. Exec form keeps gunicorn as PID 1 so it
# receives SIGTERM from Knative and drains in-flight requests.
CMD ["functions-framework"]
