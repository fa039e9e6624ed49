#!/usr/bin/env bash
# PostgreSQL's own regression suite through pgmux, on demand (not part of
# the test command: about 5 minutes here).
#
# The suite runs three times against one throwaway server: directly, then
# through pgmux in session mode, then in transaction mode. The report lists
# the tests that pass directly and fail through pgmux; each difference is
# in target/regress/<mode>/regression.diffs. docs/architecture.md
# ("PostgreSQL's regression suite") says why each listed one differs.
#
# Where the parts come from (a fresh machine): the suite's sources from
# Debian's postgresql-<major> source package at the installed server's
# version (fetched with deb-src entries of the same archive, in a private
# apt configuration under target/), pg_regress and the server headers
# from postgresql-server-dev-<major>, and regress.so, refint.so and
# autoinc.so built here against them.
#
# Usage: bash tests/regress.sh [direct|session|transaction ...]
#   PGMUX_REGRESS_DIR (default target/regress) keeps sources and results.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${PGMUX_REGRESS_DIR:-$root/target/regress}
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(direct session transaction)

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
major=$(basename "$(dirname "$PG_BIN")")
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$work"

# 1. What the suite needs to build and run.
if ! command -v gcc >/dev/null || [ ! -f "/usr/include/postgresql/$major/server/postgres.h" ] \
  || [ ! -x "/usr/lib/postgresql/$major/lib/pgxs/src/test/regress/pg_regress" ]; then
  echo "installing postgresql-server-dev-$major"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq gcc make "postgresql-server-dev-$major" >/dev/null
fi
PG_REGRESS=/usr/lib/postgresql/$major/lib/pgxs/src/test/regress/pg_regress

# 2. The suite's sources, at the installed server's version.
version=$(dpkg-query -W -f='${Version}' "postgresql-$major")
src=$(ls -d "$work"/src/postgresql-"$major"-*/ 2>/dev/null | head -1 || true)
if [ -z "$src" ]; then
  echo "fetching the sources of postgresql-$major $version"
  apt_dir=$work/apt
  mkdir -p "$apt_dir/lists/partial" "$work/src"
  # deb-src entries for the archives the machine's own deb entries name.
  sed -n 's/^Types: deb$/Types: deb-src/; /^Types:/,/^$/p' /etc/apt/sources.list.d/debian.sources \
    >"$apt_dir/sources" 2>/dev/null || true
  if [ ! -s "$apt_dir/sources" ]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$apt_dir/sources.list"
  fi
  apt_opts=(-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Etc::SourceParts=-")
  if [ -s "$apt_dir/sources" ]; then
    cp "$apt_dir/sources" "$apt_dir/src.sources"
    apt_opts+=(-o "Dir::Etc::SourceList=$apt_dir/src.sources")
  else
    apt_opts+=(-o "Dir::Etc::SourceList=$apt_dir/sources.list")
  fi
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "postgresql-$major=$version" >/dev/null)
  tar -xjf "$work"/src/postgresql-"$major"_*.orig.tar.bz2 -C "$work/src"
  src=$(ls -d "$work"/src/postgresql-"$major".*/ | head -1)
  mv "$src" "$work/src/postgresql-$major-$version"
  src=$work/src/postgresql-$major-$version/
fi
regress=$src/src/test/regress

# 3. The suite's C functions, built against the installed server.
lib=$work/lib
if [ ! -f "$lib/regress.so" ]; then
  mkdir -p "$lib"
  inc=/usr/include/postgresql/$major/server
  cflags=(-O1 -fPIC -shared -I"$inc")
  gcc "${cflags[@]}" -o "$lib/regress.so" "$regress/regress.c"
  gcc "${cflags[@]}" -o "$lib/refint.so" "$src/contrib/spi/refint.c"
  gcc "${cflags[@]}" -o "$lib/autoinc.so" "$src/contrib/spi/autoinc.c"
fi
chmod -R a+rX "$work"

# 4. A throwaway server (trust on loopback, as pg_regress expects).
[ -x target/release/pgmux ] || cargo build --release --bin pgmux -q
data=$(mktemp -d)
chmod 755 "$data"
chown postgres "$data" 2>/dev/null || true
proxy_pid=
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  run_pg "$PG_BIN/pg_ctl" -D "$data/db" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT
pg_port=$(free_port)
run_pg "$PG_BIN/initdb" -D "$data/db" -A trust -U postgres --no-sync >/dev/null
run_pg "$PG_BIN/pg_ctl" -D "$data/db" -l "$data/db.log" -w \
  -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$data -c max_connections=60 -c fsync=off" \
  start >/dev/null

# 5. The runs.
run_suite() {
  local mode=$1 port=$2 out=$work/$mode
  rm -rf "$out"
  mkdir -p "$out"
  chmod 777 "$out"
  # pg_regress runs psql; every test gets its own connection, up to 20 at once.
  (cd "$out" && PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres \
    "$PG_REGRESS" --inputdir="$regress" --outputdir="$out" --bindir="$PG_BIN" \
    --dlpath="$lib" --schedule="$regress/parallel_schedule" --max-connections=20 \
    --host=127.0.0.1 --port="$port" --user=postgres --dbname=regression \
    >"$out/summary.txt" 2>&1) || true
  # "test name ... ok" or "FAILED" (PostgreSQL 15's format).
  sed -n 's/^\(test \| \{5\}\)\?\([a-z0-9_]*\) *\.\.\. \([a-zA-Z]*\).*/\2 \3/p' "$out/summary.txt" \
    | sort >"$out/results.txt"
}

start_pgmux() {
  local mode=$1 port=$2
  cat >"$data/pgmux-$mode.toml" <<EOF
[pgmux]
listen = "127.0.0.1:$port"
pool_mode = "$mode"
auth_type = "trust"
auth_user = "postgres"
default_pool_size = 30
max_client_conn = 200
query_wait_timeout = "120s"

[databases."*"]
host = "127.0.0.1"
port = $pg_port

[users.postgres]
password = "unused-with-trust"
EOF
  target/release/pgmux run --config "$data/pgmux-$mode.toml" >"$work/pgmux-$mode.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
  echo "pgmux did not start" >&2
  cat "$work/pgmux-$mode.log" >&2
  return 1
}

for mode in "${modes[@]}"; do
  echo "running the suite: $mode"
  if [ "$mode" = direct ]; then
    run_suite direct "$pg_port"
  else
    port=$(free_port)
    start_pgmux "$mode" "$port"
    run_suite "$mode" "$port"
    kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=
  fi
  echo "  $(grep -c ' ok$' "$work/$mode/results.txt") of $(wc -l <"$work/$mode/results.txt") pass"
done

# 6. The report: what passes directly and fails through pgmux.
if [ -f "$work/direct/results.txt" ]; then
  for mode in "${modes[@]}"; do
    [ "$mode" = direct ] && continue
    echo "pass directly, fail through $mode mode:"
    join "$work/direct/results.txt" "$work/$mode/results.txt" \
      | awk '$2 == "ok" && $3 != "ok" { print "  " $1 }'
  done
fi
