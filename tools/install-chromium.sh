#!/bin/sh
# The HTML report's browser test needs Debian's Chromium; installed here when the machine allows it.
# Where it cannot be installed (no root, no apt), that one test skips and says why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }
fi
command -v chromium >/dev/null || echo "chromium could not be installed: the report's browser test will skip"
exit 0
