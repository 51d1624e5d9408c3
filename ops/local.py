"""`make run`: the whole stack on this machine, on embedded servers when none are configured.

Redis and PostgreSQL come from REDIS_URL / DATABASE_URL when those answer, otherwise from
private servers under the data folder (see ops.embedded). A development API key is made once
and kept in the data folder. Then every service runs in this process, as `weir up` does.
Variables set in the environment always win over these defaults.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from ops.embedded import EmbeddedServerError, ensure_servers, redact_url, stop_servers

DEFAULT_DATA_DIR = Path(".weir-data")


def development_api_key(data_dir: Path) -> str:
    """Return the development API key of `data_dir`, creating it (mode 0600) on first use."""
    path = data_dir / "api-key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "dev-" + secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.local", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("WEIR_DATA_DIR", DEFAULT_DATA_DIR)),
                        help="folder of the embedded servers' data and the development API key (default .weir-data)")
    args = parser.parse_args(argv)

    try:
        servers = ensure_servers(os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL"), args.data_dir,
                                 redis_port=int(os.environ.get("EMBEDDED_REDIS_PORT", 6390)),
                                 pg_port=int(os.environ.get("EMBEDDED_PG_PORT", 5440)))
    except EmbeddedServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    os.environ["REDIS_URL"] = servers.redis_url
    os.environ["DATABASE_URL"] = servers.database_url
    os.environ.setdefault("NODE_ENV", "development")
    os.environ.setdefault("API_KEYS", development_api_key(args.data_dir))
    collector_port = int(os.environ.get("COLLECTOR_PORT", 4001))
    api_port = int(os.environ.get("API_PORT", 4002))
    processor_port = int(os.environ.get("PROCESSOR_METRICS_PORT", 4010))
    realtime_port = int(os.environ.get("REALTIME_PORT", 4003))

    print(f"""
Weir is starting.
  collector   http://127.0.0.1:{collector_port}/collect
  dashboard   http://127.0.0.1:{api_port}/  (API under /api/)
  live feed   http://127.0.0.1:{realtime_port}/live/SITE
  processor   http://127.0.0.1:{processor_port}/health
  Redis       {redact_url(servers.redis_url)}
  PostgreSQL  {redact_url(servers.database_url)}
  API key     {os.environ['API_KEYS'].split(',')[0]}
Next, in another shell (with the same REDIS_URL and DATABASE_URL, printed by
`.venv/bin/python -m ops.embedded status`):
  .venv/bin/weir site add example.com --timezone UTC
Stop with Ctrl-C.
""", flush=True)

    from ops.cli import main as weir_main

    try:
        # --host: the stack stays on the addresses printed above, whatever HOST the shell exports.
        return weir_main(["up", "--host", "127.0.0.1", "--collector-port", str(collector_port),
                          "--api-port", str(api_port), "--processor-metrics-port", str(processor_port),
                          "--realtime-port", str(realtime_port)])
    finally:
        stop_servers(servers)


if __name__ == "__main__":
    sys.exit(main())
