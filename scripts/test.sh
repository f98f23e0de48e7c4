#!/usr/bin/env bash
# The project's one test command: installs what the tests need (idempotently),
# checks formatting and lints, builds the binary the end-to-end tests start,
# and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# A target dir that outlives a fresh clone, so CI on the same machine reuses builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/toplog-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "== installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi

# The OpenAPI test validates the served document with a real validator.
if ! python3 -c "import openapi_spec_validator" >/dev/null 2>&1; then
  echo "== installing openapi-spec-validator"
  python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator
fi

# The API fuzz test runs Schemathesis (its CLI is `st`), pinned to 4.32.
if ! st --version 2>/dev/null | grep -q ' 4\.32\.'; then
  echo "== installing schemathesis 4.32"
  python3 -m pip install --quiet --disable-pip-version-check 'schemathesis==4.32.*'
fi

# The archive tests run a real S3-compatible server (moto) and read the
# archived Parquet files with DuckDB, downloading them with boto3.
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c "import duckdb, boto3" >/dev/null 2>&1; then
  echo "== installing moto[server], duckdb"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' duckdb boto3
fi
# The encryption test reads the encrypted archive with DuckDB, which reads
# arrow-rs's encrypted Parquet from 1.5.6 on.
if ! python3 -c "import duckdb, sys; sys.exit(tuple(map(int, duckdb.__version__.split('.')[:3])) < (1, 5, 6))" >/dev/null 2>&1; then
  echo "== upgrading duckdb"
  python3 -m pip install --quiet --disable-pip-version-check 'duckdb>=1.5.6'
fi

# The OpenTelemetry tests send spans with the real Python SDK and its OTLP
# exporters (HTTP and gRPC), and ask the gRPC health service with grpcio.
if ! python3 -c "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.exporter.otlp.proto.grpc, grpc" >/dev/null 2>&1; then
  echo "== installing the OpenTelemetry SDK and OTLP exporter"
  python3 -m pip install --quiet --disable-pip-version-check 'opentelemetry-sdk==1.*' 'opentelemetry-exporter-otlp-proto-http==1.*' 'opentelemetry-exporter-otlp-proto-grpc==1.*'
fi

# The gRPC test builds a Python client from the .proto with grpcio-tools.
if ! python3 -c "import grpc_tools" >/dev/null 2>&1; then
  echo "== installing grpcio-tools"
  python3 -m pip install --quiet --disable-pip-version-check 'grpcio-tools==1.*'
fi

# The JWT test's stand-in identity provider signs tokens with PyJWT.
if ! python3 -c "import jwt, cryptography" >/dev/null 2>&1; then
  echo "== installing PyJWT"
  python3 -m pip install --quiet --disable-pip-version-check 'pyjwt[crypto]==2.*'
fi

# The alerting tests deliver to a real SMTP server (aiosmtpd) and a real
# Prometheus Alertmanager. Installing Alertmanager may start the
# distribution's own; it is stopped: the tests start theirs on free ports.
if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
  echo "== installing aiosmtpd"
  python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd==1.*'
fi
if ! command -v prometheus-alertmanager >/dev/null 2>&1; then
  echo "== installing prometheus-alertmanager"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends prometheus-alertmanager >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus-alertmanager >/dev/null; }
  service prometheus-alertmanager stop >/dev/null 2>&1 || true
fi

# The metrics test checks the exposition with promtool and has a real
# Prometheus scrape a node. Installing it may start the distribution's own
# (on :9090); it is stopped: the test starts its own on a free port.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "== installing prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
  service prometheus stop >/dev/null 2>&1 || true
fi

# The web page test drives the system Chromium headless with Selenium.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "== installing chromium, chromium-driver"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }
fi
if ! python3 -c "import selenium" >/dev/null 2>&1; then
  echo "== installing selenium"
  python3 -m pip install --quiet --disable-pip-version-check 'selenium==4.*'
fi

# The import test runs a real nginx, driven by wrk. Installing nginx starts
# the distribution's own server; it is stopped: the test starts its own.
if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ] || ! command -v wrk >/dev/null 2>&1; then
  echo "== installing nginx, wrk"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends nginx wrk >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends nginx wrk >/dev/null; }
  service nginx stop >/dev/null 2>&1 || true
fi
export PATH="$PATH:/usr/sbin"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build the toplog binary for end-to-end tests"
cargo build --locked --bin toplog
cargo build --locked -p toplog-examples --example grpc_client
export TOPLOG_BIN="$CARGO_TARGET_DIR/debug/toplog"
echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
