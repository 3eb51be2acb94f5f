#!/bin/sh
# Install Secure AI Studio from an offline bundle: no registry, no network.
#
#   ./install.sh [--prefix /opt/secure-ai-studio] [--release-key release.pub.pem]
#                [--systemd-dir /etc/systemd/system] [--no-system]
#
# Checks every member against SHA256SUMS (and SHA256SUMS against its Ed25519 signature when
# --release-key names the release public key you trust), installs the locked wheels with
# `pip --no-index` into PREFIX/.venv, and, run as root, creates the `sai` user and group and
# installs the systemd unit. Run it from the unpacked bundle's directory or give its path.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/secure-ai-studio
RELEASE_KEY=
SYSTEMD_DIR=/etc/systemd/system
SYSTEM=auto
PYTHON=${PYTHON:-python3}

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --release-key) RELEASE_KEY=${2:?--release-key needs a PEM file}; shift 2 ;;
        --release-key=*) RELEASE_KEY=${1#*=}; shift ;;
        --systemd-dir) SYSTEMD_DIR=${2:?--systemd-dir needs a directory}; shift 2 ;;
        --systemd-dir=*) SYSTEMD_DIR=${1#*=}; shift ;;
        --no-system) SYSTEM=no; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
done

cd "$HERE"
[ -f SHA256SUMS ] || die "SHA256SUMS is missing: this is not a complete bundle"

# 1. Integrity: the checksum file's signature (when a trusted key is given), then every member,
#    and nothing in the bundle that the checksum file does not name.
if [ -n "$RELEASE_KEY" ]; then
    [ -f SHA256SUMS.sig ] || die "--release-key given but the bundle has no SHA256SUMS.sig: refusing an unsigned bundle"
    openssl pkeyutl -verify -pubin -inkey "$RELEASE_KEY" -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig >/dev/null 2>&1 \
        || die "SHA256SUMS.sig does not verify with $RELEASE_KEY: the checksum file was changed or signed by another key"
    echo "signature: SHA256SUMS signed by $RELEASE_KEY"
elif [ -f SHA256SUMS.sig ]; then
    echo "note: the bundle is signed; pass --release-key RELEASE.pub.pem to check the signature" >&2
fi
bad=$(sha256sum --quiet --check SHA256SUMS 2>/dev/null | sed -n 's/: FAILED.*$//p') || true
[ -z "$bad" ] || die "checksum mismatch, refusing to install: $(echo "$bad" | tr '\n' ' ')"
sha256sum --quiet --strict --check SHA256SUMS >/dev/null 2>&1 || die "a member named in SHA256SUMS is missing or unreadable"
listed=$(mktemp); trap 'rm -f "$listed"' EXIT
awk '{ sub(/^[0-9a-f]+  /, ""); print }' SHA256SUMS | sort > "$listed"
extra=$(find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig | sed 's|^\./||' | sort | comm -23 - "$listed")
[ -z "$extra" ] || die "files not named in SHA256SUMS, refusing to install: $(echo "$extra" | tr '\n' ' ')"
echo "checksums: $(wc -l < SHA256SUMS) members verified"

# 2. The venv, from the wheelhouse only, every hash checked against the lock.
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not Python 3.11 (the lock is for 3.11); set PYTHON=/path/to/python3.11"
mkdir -p "$PREFIX"
[ -x "$PREFIX/.venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/.venv"
PIP="$PREFIX/.venv/bin/python -m pip --disable-pip-version-check --no-input --isolated"
$PIP install -q --no-index --find-links wheelhouse --require-hashes --no-deps -r requirements.lock
$PIP install -q --no-index --no-deps wheel/*.whl
install -m 0644 requirements.lock "$PREFIX/requirements.lock"  # what `sai doctor` checks the venv against
echo "installed: $("$PREFIX/.venv/bin/sai" --version 2>/dev/null || echo secure-ai-studio) in $PREFIX/.venv"

# 3. System integration, as root: the service user and group, and the unit pointing at this prefix.
if [ "$SYSTEM" = auto ] && [ "$(id -u)" = 0 ]; then
    getent group sai >/dev/null || groupadd --system sai
    getent passwd sai >/dev/null || useradd --system --gid sai --home-dir /var/lib/secure-ai-studio \
        --no-create-home --shell /usr/sbin/nologin sai
    mkdir -p "$SYSTEMD_DIR"
    sed "s|/opt/secure-ai-studio/.venv|$PREFIX/.venv|g" secure-ai-studio.service > "$SYSTEMD_DIR/secure-ai-studio.service.tmp"
    chmod 0644 "$SYSTEMD_DIR/secure-ai-studio.service.tmp"
    mv "$SYSTEMD_DIR/secure-ai-studio.service.tmp" "$SYSTEMD_DIR/secure-ai-studio.service"
    echo "system: user and group 'sai', unit $SYSTEMD_DIR/secure-ai-studio.service"
    cat <<EOF

Next:
  usermod -aG sai OPERATOR                  # each operator who may use the socket
  $PREFIX/.venv/bin/sai doctor              # preflight: versions, devices, modes, disk
  systemctl daemon-reload && systemctl enable --now secure-ai-studio
  sai status                                # as an operator; socket /run/secure-ai-studio/daemon.sock
EOF
else
    cat <<EOF

Next (no system changes made; run as root to create the 'sai' user and install the unit):
  $PREFIX/.venv/bin/sai daemon --state-dir DIR &   # the daemon in the foreground of this shell
  $PREFIX/.venv/bin/sai status
EOF
fi
