# The validator image: `cacheon-validator run` as the unprivileged `cacheon` user, with the same
# layout as deploy/cacheon-validator.service (docs/operators.md):
#   docker run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
#     -v /etc/cacheon/config.toml:/etc/cacheon/config.toml:ro \
#     -v /etc/cacheon/wallets:/etc/cacheon/wallets:ro \
#     -v cacheon-state:/var/lib/cacheon --env-file /etc/cacheon/cacheon.env IMAGE
#
# Build arguments:
#   BASE_IMAGE  any Debian-like image with python3 (>= 3.11) and its venv module; the tests use a
#               Debian 12 made by debootstrap and imported, so no registry is needed
#   WHEELHOUSE  a directory of wheels in the build context (`pip wheel -w wheelhouse
#               ".[validator]"` beforehand): everything is installed from it with no index, so
#               the build needs no network; unset, pip installs from PyPI
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/cacheon/venv \
 && /opt/cacheon/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} ".[validator]"

# The source and the wheels stay in the build stage; the image gets the installed venv only.
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/cacheon \
      --shell /usr/sbin/nologin cacheon \
 && install -d -o cacheon -g cacheon -m 0700 /var/lib/cacheon \
 && install -d -m 0755 /etc/cacheon /etc/cacheon/wallets
COPY --from=build /opt/cacheon/venv /opt/cacheon/venv

USER cacheon
ENV HOME=/var/lib/cacheon \
    PYTHONUNBUFFERED=1 \
    CACHEON_VALIDATOR__STATE_DIR=/var/lib/cacheon \
    CACHEON_WALLET__PATH=/etc/cacheon/wallets \
    CACHEON_PODS__SSH_KEY_PATH=/var/lib/cacheon/pod_ed25519
VOLUME ["/var/lib/cacheon"]
ENTRYPOINT ["/opt/cacheon/venv/bin/cacheon-validator"]
CMD ["run", "--config", "/etc/cacheon/config.toml"]
