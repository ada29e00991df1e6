# StreamGate in a container: built in the Rust image, run on Debian slim with ffmpeg.
# Not built on the project's CI machines (no container runtime there); see README.
#   docker build -t streamgate . && docker run -p 8080:8080 -v streamgate:/var/lib/streamgate streamgate
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin streamgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/streamgate streamgate
COPY --from=build /src/target/release/streamgate /usr/bin/streamgate
COPY packaging/streamgate.toml /etc/streamgate/streamgate.toml
USER streamgate
VOLUME /var/lib/streamgate
EXPOSE 8080
ENTRYPOINT ["/usr/bin/streamgate", "--config", "/etc/streamgate/streamgate.toml"]
# Inside the container the server must listen on every interface.
CMD ["--bind", "0.0.0.0:8080"]
