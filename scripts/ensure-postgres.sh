#!/usr/bin/env bash
# Make sure the PostgreSQL the tests use is up: start the local cluster if it is down,
# and fail loudly (never skip) when no PostgreSQL can be had.
set -u
HOST=${STATEM_PG_HOST:-127.0.0.1}
PORT=${STATEM_PG_PORT:-5432}
if pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; then
  exit 0
fi
echo "PostgreSQL is not answering on $HOST:$PORT; starting the local cluster..."
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
for _ in $(seq 1 30); do
  pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null && { echo "PostgreSQL is up."; exit 0; }
  sleep 1
done
echo "ERROR: no PostgreSQL on $HOST:$PORT and it could not be started." >&2
echo "       The test suite needs a real PostgreSQL (trust auth, database 'test')." >&2
echo "       Start one, or set STATEM_TEST_PG_URL to a reachable server, then re-run." >&2
exit 1
