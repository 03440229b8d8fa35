# The validator image: `cacheon-validator run` as a non-root user.
# Mount the wallet directory read-only and the config file; pass secrets as environment:
#   docker run -v ~/.bittensor/wallets:/home/cacheon/.bittensor/wallets:ro \
#              -v ./config.toml:/etc/cacheon/config.toml:ro -v cacheon-state:/var/lib/cacheon \
#              --env-file cacheon.env IMAGE
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cacheon \
 && mkdir -p /var/lib/cacheon /etc/cacheon \
 && chown cacheon:cacheon /var/lib/cacheon

WORKDIR /opt/cacheon
COPY pyproject.toml README.md LICENSE ./
COPY cacheon ./cacheon
RUN pip install --no-cache-dir ".[validator]"

USER cacheon
ENV CACHEON_VALIDATOR__STATE_DIR=/var/lib/cacheon \
    CACHEON_WALLET__PATH=/home/cacheon/.bittensor/wallets \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/cacheon"]
ENTRYPOINT ["cacheon-validator"]
CMD ["run", "--config", "/etc/cacheon/config.toml"]
