"""Container health check: exit 0 when the local server is ready (GET /readyz answers 200).

Docker's HEALTHCHECK runs it inside the container (``python -I healthcheck.py``), so it needs
nothing but the standard library: no curl in the image. It reads the same ``EXITWISE_HOST`` and
``EXITWISE_PORT`` as the server. Ready means loaded, warmed up and not draining; /readyz needs no
API key.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def readyz_url(host: str, port: str) -> str:
    # A wildcard bind address is reachable on loopback; anything else is used as it is.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    url = readyz_url(
        os.environ.get("EXITWISE_HOST", "127.0.0.1"), os.environ.get("EXITWISE_PORT", "8000")
    )
    # No proxy: an HTTP(S)_PROXY in the container's environment must not reroute loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            status = int(response.status)
    except urllib.error.HTTPError as err:  # 503 while loading or draining
        status = err.code
    except (OSError, ValueError) as err:  # refused, timed out, bad address
        print(f"unhealthy: {url}: {err}")
        return 1
    if status == 200:
        return 0
    print(f"unhealthy: {url} answered {status}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
