# Sourced by repro.sh and test.sh: the system programs outside the Python lock. Each check stops
# at once with one line saying what to install (.ci/run installs them with apt instead).
need_java() {
  command -v java >/dev/null && return 0
  echo "error: java not found: evaluate's METEOR needs a Java runtime (Debian/Ubuntu: sudo apt-get install default-jre-headless)" >&2
  exit 1
}

need_chromium() {
  # The same browser the report test uses: $CXR_CHROMIUM, else /usr/bin/chromium.
  local browser=${CXR_CHROMIUM:-/usr/bin/chromium}
  [ -x "$browser" ] && return 0
  echo "error: $browser not found: the report tests need Chromium (Debian/Ubuntu: sudo apt-get install chromium; or set CXR_CHROMIUM=/path/to/chromium)" >&2
  exit 1
}
