# Slipway's own image, for docker-compose.yml on a machine that can pull.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# `slipway --version` names this commit; the context has no .git
# (docker build --build-arg SLIPWAY_COMMIT=$(git rev-parse --short=12 HEAD) .).
ARG SLIPWAY_COMMIT=
RUN cargo build --release --locked -p slipway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/slipway /usr/local/bin/slipway
ENTRYPOINT ["slipway"]
