#!/usr/bin/env bash
# User-space instructions per transaction, counted by callgrind: the same
# number whatever else the machine is doing, so two builds compare on any
# machine, one at a time. (PgBouncer's figures in docs/benchmarks.md were
# taken the same way by hand: it refuses to run as root, and callgrind's
# controls do not reach a process of another user here.)
#
# Usage: bash benches/callgrind.sh [PGMUX_BINARY ...]
#   (default: target/release/pgmux, built if missing)
#   PGMUX_CALLGRIND_TX=300 transactions per client (4 clients, 1 thread).
#   PGMUX_CALLGRIND_KEEP=DIR keeps each profile there (callgrind_annotate).
#
# Each load runs a warm-up with instrumentation off, then a fixed run with
# it on; the count covers only that run (logins of its 4 clients included).
set -euo pipefail
cd "$(dirname "$0")/.."

TX=${PGMUX_CALLGRIND_TX:-300}
CLIENTS=4
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }

binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  cargo build --release --bin pgmux -q
  binaries=(target/release/pgmux)
fi

work=$(mktemp -d)
chmod 755 "$work"
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() {
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null || true
  run_pg "$PG_BIN/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A throwaway PostgreSQL with md5 logins and pgbench's tables.
[ "$(id -u)" = 0 ] && chown postgres "$work"
pg_port=$(free_port)
echo bench-secret > "$work/pw"
run_pg "$PG_BIN/initdb" -D "$work/data" -U postgres --pwfile="$work/pw" -A md5 >/dev/null
run_pg "$PG_BIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=60 -c password_encryption=md5" start >/dev/null
export PGPASSWORD=bench-secret
psql -qX -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
  -c "CREATE ROLE bench LOGIN PASSWORD 'bench-secret'" -c "CREATE DATABASE bench OWNER bench" >/dev/null
pgbench -q -i -s 1 -h 127.0.0.1 -p "$pg_port" -U bench bench >/dev/null 2>&1

start_pgmux() {
  local bin=$1 port=$2
  cat > "$work/pgmux.toml" <<EOF
[pgmux]
listen = "127.0.0.1:$port"
pool_mode = "transaction"
default_pool_size = 20
auth_type = "md5"
workers = 1
[databases.bench]
port = $pg_port
[users.bench]
password = "bench-secret"
EOF
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
    "$bin" run --config "$work/pgmux.toml" 2>"$work/proxy.log" &
  proxy_pid=$!
}

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "proxy did not start" >&2; cat "$work/proxy.log" >&2; return 1; }

# The instructions one load costs per transaction, on the proxy at $port.
measure() {
  local port=$1; shift
  pgbench -n -h 127.0.0.1 -p "$port" -U bench -c "$CLIENTS" -j 1 -t 50 "$@" bench >/dev/null 2>&1
  callgrind_control -z "$proxy_pid" >/dev/null 2>&1
  callgrind_control -i on "$proxy_pid" >/dev/null 2>&1
  local ok=1
  pgbench -n -h 127.0.0.1 -p "$port" -U bench -c "$CLIENTS" -j 1 -t "$TX" "$@" bench >"$work/pgbench.log" 2>&1 || ok=
  callgrind_control -i off "$proxy_pid" >/dev/null 2>&1
  callgrind_control -d "$proxy_pid" >/dev/null 2>&1
  local file ir
  file=$(ls -t "$work"/cg.*.* 2>/dev/null | head -1)
  ir=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
  if [ -n "${PGMUX_CALLGRIND_KEEP:-}" ]; then
    mkdir -p "$PGMUX_CALLGRIND_KEEP"
    mv "$file" "$PGMUX_CALLGRIND_KEEP/$(echo "$LOAD_NAME" | tr -c 'a-zA-Z0-9\n' '_').out"
  else
    rm -f "$file"
  fi
  if [ -n "$ok" ] && [ -n "$ir" ]; then echo $(( ir / (CLIENTS * TX) )); else echo "fails"; fi
}

loads=("select-only, simple|-S -M simple" "select-only, extended|-S -M extended" "select-only, prepared|-S -M prepared" "TPC-B, simple|-M simple")
targets=("${binaries[@]}")

printf '| load |'; for t in "${targets[@]}"; do printf ' %s |' "$t"; done; echo
printf '|---|'; for _ in "${targets[@]}"; do printf -- '---|'; done; echo
declare -A result
for t in "${targets[@]}"; do
  port=$(free_port)
  start_pgmux "$t" "$port"
  wait_port "$port"
  for l in "${loads[@]}"; do
    # shellcheck disable=SC2086
    result["$t|${l%%|*}"]=$(LOAD_NAME="$(basename "$t") ${l%%|*}" measure "$port" ${l#*|})
  done
  kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=
done
for l in "${loads[@]}"; do
  printf '| %s |' "${l%%|*}"
  for t in "${targets[@]}"; do printf ' %s |' "${result["$t|${l%%|*}"]}"; done
  echo
done
