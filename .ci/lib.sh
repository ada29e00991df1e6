# Shared by .ci/serve and .ci/test: make sure the tools StreamGate needs are on this machine.
# Debian packages are installed with apt when we are root (or have password-less sudo);
# otherwise we stop and print the exact command to run.

need_debian_packages() {
  # Arguments: pairs of "command:package".
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local install="apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive $install -qq >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "installing: ${missing[*]}" >&2
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $install -qq >/dev/null
  else
    echo "missing: ${missing[*]}. Install with:  sudo apt-get update && sudo $install" >&2
    exit 1
  fi
}

need_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "missing: the Rust toolchain (1.95+). Install with:  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
    exit 1
  fi
}

need_node_packages() {
  # Arguments: npm package specs, installed into target/ci-node (not committed). Skips npm when
  # the lock of what was installed already lists exactly these specs.
  local prefix=target/ci-node stamp="target/ci-node/.installed"
  local want="$*"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  local install="npm install --prefix $prefix --no-audit --no-fund $want"
  if ! command -v npm >/dev/null 2>&1; then
    need_debian_packages npm:npm
  fi
  mkdir -p "$prefix"
  echo "installing: $want" >&2
  if ! $install >/dev/null; then
    echo "npm install failed. Run by hand:  $install" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
}

need_python_tools() {
  # The tus interop tests drive the server with tuspy; the S3 tests start moto_server; the OpenAPI
  # tests validate the document and run schemathesis against the server. All go
  # into a venv under target/ (pip skips what is already installed, so re-runs are quick).
  need_debian_packages python3:python3
  if [ ! -x target/py/bin/pip ]; then
    mkdir -p target
    # Debian splits venv support into python3-venv; the pseudo-command forces its install.
    python3 -m venv target/py 2>/dev/null ||
      { need_debian_packages no-such-command:python3-venv && rm -rf target/py && python3 -m venv target/py; }
  fi
  target/py/bin/pip install -q --disable-pip-version-check 'tuspy==1.*' 'moto[server]==5.*' 'openapi-spec-validator==0.7.*' 'schemathesis==4.32.5'
}
