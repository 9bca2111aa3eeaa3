# The image the Kubernetes jobs run (jobs/kubernetes): the wheel of this repository in a
# venv on python:3.11-slim, as a non-root user, ENTRYPOINT `retention`.
#
#   docker build -t registry.example.com/retention:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -v "$PWD/policies.yaml:/etc/retention/policies.yaml:ro" \
#     -v retention-audit:/var/lib/retention/audit -e SHOP_DATABASE_URL=... \
#     registry.example.com/retention:0.1.0 validate
#
# Read-only root friendly: nothing is written at run time except the audit log (and its
# lock) under the mounted audit volume; HOME and TMPDIR point at /tmp (a tmpfs or an
# emptyDir); no .pyc files are written (they are compiled at install time).
# tests/test_wheel.py repeats the install steps below in a fresh venv (and builds and runs
# this image where a container engine answers `docker info`).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY retention ./retention
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/retention/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    RETENTION_POLICIES=/etc/retention/policies.yaml
COPY --from=build /wheels /wheels
RUN python -m venv /opt/retention \
    && /opt/retention/bin/pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 retention \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin retention \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/retention /var/lib/retention/audit
USER 10001:10001
WORKDIR /var/lib/retention
VOLUME ["/var/lib/retention/audit"]
ENTRYPOINT ["retention"]
CMD ["--help"]
