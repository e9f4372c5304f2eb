#!/usr/bin/env bash
# Set up edgekd on a Jetson with JetPack 6.x, once or again (every step checks before it acts).
#   sudo jetson/setup.sh [--user edgekd] [--prefix /opt/edgekd]
# JetPack's own TensorRT, CUDA and GStreamer-enabled OpenCV are used through a venv that sees the system's packages;
# pycuda is built against JetPack's CUDA; edgekd is installed from this checkout; `edgekd doctor` runs at the end.
# Stops at the first failure and says what to do.
set -euo pipefail

SERVICE_USER="edgekd"
PREFIX="/opt/edgekd"
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

while [ $# -gt 0 ]; do
  case "$1" in
    --user) SERVICE_USER="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

fail() { echo "setup.sh: $1" >&2; echo "  fix: $2" >&2; exit 1; }
step() { echo "== $1"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (apt, a system user, the service unit)" "run it with sudo"
[ -f /etc/nv_tegra_release ] || fail "this is not a Jetson (no /etc/nv_tegra_release)" "run it on the Jetson; on a desktop use 'make setup'"
release="$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9]*\).*/\1.\2/p' /etc/nv_tegra_release)"
case "$release" in
  36.*) ;;
  *) fail "L4T ${release:-unknown} is not JetPack 6.x" "flash JetPack 6 with NVIDIA SDK Manager" ;;
esac

step "apt packages (TensorRT Python bindings, OpenCV with GStreamer, build tools for pycuda)"
packages=(python3-venv python3-dev python3-opencv python3-libnvinfer nvidia-cuda-dev build-essential
          gstreamer1.0-tools v4l-utils)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q || fail "apt-get update failed" "check the network and /etc/apt/sources.list.d/nvidia-l4t-apt-source.list"
  apt-get install -y -q "${missing[@]}" || fail "could not install ${missing[*]}" "sudo apt-get install ${missing[*]} and read its error"
fi

step "service user $SERVICE_USER (member of video, to open cameras)"
id "$SERVICE_USER" >/dev/null 2>&1 || useradd --system --create-home --home-dir "$PREFIX/home" --shell /usr/sbin/nologin "$SERVICE_USER"
usermod -a -G video "$SERVICE_USER"

step "venv in $PREFIX/venv with the system's packages (JetPack's tensorrt and cv2)"
mkdir -p "$PREFIX/models" "$PREFIX/runs"
[ -x "$PREFIX/venv/bin/python" ] || python3 -m venv --system-site-packages "$PREFIX/venv"
pip="$PREFIX/venv/bin/pip"
"$pip" install -q --upgrade pip

step "pycuda against JetPack's CUDA"
if ! "$PREFIX/venv/bin/python" -c "import pycuda" 2>/dev/null; then
  export CUDA_ROOT=/usr/local/cuda PATH="/usr/local/cuda/bin:$PATH"
  "$pip" install -q pycuda || fail "pycuda did not build" "check that /usr/local/cuda/bin/nvcc exists (apt install nvidia-cuda-dev)"
fi

step "edgekd from $SOURCE"
"$pip" install -q -e "$SOURCE" || fail "edgekd did not install" "read pip's error above; the checkout must be complete"
# pip's opencv-python has no GStreamer: JetPack's cv2 must be the one imported
"$pip" uninstall -y -q opencv-python opencv-python-headless >/dev/null 2>&1 || true
"$PREFIX/venv/bin/python" -c "import tensorrt, cv2" || fail "tensorrt or cv2 does not import in the venv" "apt install python3-libnvinfer python3-opencv, then run setup.sh again"

step "service unit edgekd@.service"
install -m 0644 "$SOURCE/jetson/edgekd@.service" /etc/systemd/system/edgekd@.service
mkdir -p /etc/edgekd
[ -f /etc/edgekd/example.yaml ] || install -m 0644 "$SOURCE/jetson/example.yaml" /etc/edgekd/example.yaml
chown -R "$SERVICE_USER:$SERVICE_USER" "$PREFIX/models" "$PREFIX/runs"
systemctl daemon-reload

step "clocks at their maximum at every boot (steady frame times)"
if command -v jetson_clocks >/dev/null 2>&1; then
  jetson_clocks || echo "warning: jetson_clocks failed; run it by hand to see why" >&2
fi

step "edgekd doctor"
"$PREFIX/venv/bin/edgekd" doctor || true
echo "done: copy /etc/edgekd/example.yaml to /etc/edgekd/NAME.yaml, set model and source, then"
echo "      sudo systemctl enable --now edgekd@NAME"
