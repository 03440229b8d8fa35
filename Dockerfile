# The validator image: `cacheon-validator run` as the unprivileged `cacheon` user, with the same
# layout as deploy/cacheon-validator.service (docs/operators.md):
#   docker run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
#     -v /etc/cacheon/config.toml:/etc/cacheon/config.toml:ro \
#     -v /etc/cacheon/wallets:/etc/cacheon/wallets:ro \
#     -v cacheon-state:/var/lib/cacheon --env-file /etc/cacheon/cacheon.env IMAGE
FROM python:3.11-slim

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/cacheon \
      --shell /usr/sbin/nologin cacheon \
 && install -d -o cacheon -g cacheon -m 0700 /var/lib/cacheon \
 && install -d -m 0755 /etc/cacheon /etc/cacheon/wallets

WORKDIR /opt/cacheon
COPY pyproject.toml README.md LICENSE ./
COPY cacheon ./cacheon
RUN python -m venv /opt/cacheon/venv \
 && /opt/cacheon/venv/bin/pip install --no-cache-dir ".[validator]"

USER cacheon
ENV HOME=/var/lib/cacheon \
    PYTHONUNBUFFERED=1 \
    CACHEON_VALIDATOR__STATE_DIR=/var/lib/cacheon \
    CACHEON_WALLET__PATH=/etc/cacheon/wallets \
    CACHEON_PODS__SSH_KEY_PATH=/var/lib/cacheon/pod_ed25519
VOLUME ["/var/lib/cacheon"]
ENTRYPOINT ["/opt/cacheon/venv/bin/cacheon-validator"]
CMD ["run", "--config", "/etc/cacheon/config.toml"]
