#!/usr/bin/env bash
# A whole webfl stack on this machine, in one folder, on loopback: Redis, PostgreSQL,
# webfl member(s) and nginx with deploy/nginx/webfl.conf in front. No systemd needed;
# for a machine managed by systemd see deploy/README.md and deploy/systemd/.
#
#   deploy/local.sh start DIR      start what is not running yet (idempotent)
#   deploy/local.sh stop DIR       stop everything started in DIR (the data stays)
#   deploy/local.sh status DIR
#
# Ports (environment): WEBFL_HTTP_PORT (nginx, 8080), WEBFL_MEMBER_PORT (first member,
# 8001), WEBFL_REDIS_PORT (16379), WEBFL_PG_PORT (15432). WEBFL_MEMBERS is the number of
# members (1 by default; ports from WEBFL_MEMBER_PORT up), one cluster on the Redis, their
# state in the PostgreSQL. Starting again
# with more members adds them and reloads nginx. The admin token is $WEBFL_ADMIN_TOKEN or
# one generated into DIR/admin_token, shared by every member.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WEBFL="${WEBFL:-$HERE/../.venv/bin/webfl}"
HTTP_PORT="${WEBFL_HTTP_PORT:-8080}"
MEMBER_PORT="${WEBFL_MEMBER_PORT:-8001}"
REDIS_PORT="${WEBFL_REDIS_PORT:-16379}"
PG_PORT="${WEBFL_PG_PORT:-15432}"
MEMBERS="${WEBFL_MEMBERS:-1}"

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd="$1"
mkdir -p "$2"
DIR="$(cd "$2" && pwd)"

log() { echo "[webfl local] $*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "[webfl local] nothing listens on port $1 after 30 s" >&2
  return 1
}
# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

start_redis() {
  mkdir -p "$DIR/redis"
  if alive "$DIR/redis/redis.pid"; then log "redis: running"; return; fi
  [ -f "$DIR/redis/password" ] || secret > "$DIR/redis/password"
  chmod 600 "$DIR/redis/password"
  # Loopback only, a password, append-only persistence in DIR/redis.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" --appendonly yes \
    --requirepass "$(cat "$DIR/redis/password")" --daemonize yes \
    --pidfile "$DIR/redis/redis.pid" --logfile "$DIR/redis/redis.log"
  wait_port "$REDIS_PORT"
  log "redis: redis://:PASSWORD@127.0.0.1:$REDIS_PORT/0 (password in $DIR/redis/password)"
}

start_postgres() {
  local bin
  bin="$(pg_bin)"
  [ -n "$bin" ] || { echo "[webfl local] PostgreSQL is not installed (make system)" >&2; exit 1; }
  mkdir -p "$DIR/postgres"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR/postgres"; fi
  if [ -f "$DIR/postgres/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" status -D "$DIR/postgres/data" >/dev/null; then
    log "postgres: running"; return
  fi
  if [ ! -f "$DIR/postgres/data/PG_VERSION" ]; then
    [ -f "$DIR/postgres/password" ] || secret > "$DIR/postgres/password"
    chmod 600 "$DIR/postgres/password"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR/postgres/password"; fi
    as_pg "$bin/initdb" -D "$DIR/postgres/data" -U webfl --pwfile="$DIR/postgres/password" \
      --auth=scram-sha-256 --encoding=UTF8 --locale=C >/dev/null
    as_pg mkdir -p "$DIR/postgres/sockets"
  fi
  as_pg "$bin/pg_ctl" start -w -D "$DIR/postgres/data" -l "$DIR/postgres/postgres.log" \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $DIR/postgres/sockets" >/dev/null
  if ! PGPASSWORD="$(cat "$DIR/postgres/password")" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U webfl -d postgres -tAc \
       "SELECT 1 FROM pg_database WHERE datname = 'webfl'" | grep -q 1; then
    PGPASSWORD="$(cat "$DIR/postgres/password")" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U webfl -d postgres -qc "CREATE DATABASE webfl"
  fi
  log "postgres: postgresql://webfl:PASSWORD@127.0.0.1:$PG_PORT/webfl (password in $DIR/postgres/password)"
}

start_members() {
  if [ -z "${WEBFL_ADMIN_TOKEN:-}" ]; then
    [ -f "$DIR/admin_token" ] || secret > "$DIR/admin_token"
    chmod 600 "$DIR/admin_token"
    WEBFL_ADMIN_TOKEN="$(cat "$DIR/admin_token")"
  fi
  local i port
  for i in $(seq 1 "$MEMBERS"); do
    port=$((MEMBER_PORT + i - 1))
    mkdir -p "$DIR/member-$i"
    if alive "$DIR/member-$i/webfl.pid"; then log "member $i: running"; continue; fi
    # The store (history, checkpoints, shared keys) is PostgreSQL's, the coordination Redis's;
    # their passwords go by the environment, never on the command line where ps shows them.
    PGPASSWORD="$(cat "$DIR/postgres/password")" WEBFL_ADMIN_TOKEN="$WEBFL_ADMIN_TOKEN" \
      WEBFL_REDIS="redis://:$(cat "$DIR/redis/password")@127.0.0.1:$REDIS_PORT/0" nohup "$WEBFL" serve \
      --host 127.0.0.1 --port "$port" --member-id "member-$i" --database "postgresql://webfl@127.0.0.1:$PG_PORT/webfl" \
      --data-dir "$DIR/member-$i" --log-level warning \
      --forwarded-allow-ips 127.0.0.1 --public-origin "http://127.0.0.1:$HTTP_PORT" >> "$DIR/member-$i/webfl.log" 2>&1 &
    echo $! > "$DIR/member-$i/webfl.pid"
    wait_port "$port"
    log "member $i: http://127.0.0.1:$port (log $DIR/member-$i/webfl.log)"
  done
}

start_nginx() {
  mkdir -p "$DIR/nginx/temp"
  chmod 777 "$DIR/nginx/temp"  # the workers run as nobody when the master is root
  local members=() i
  for i in "$DIR"/member-*/webfl.pid; do
    alive "$i" && members+=("127.0.0.1:$((MEMBER_PORT + $(basename "$(dirname "$i")" | cut -d- -f2) - 1))")
  done
  python3 "$HERE/nginx_site.py" --standalone "$DIR/nginx" --listen "127.0.0.1:$HTTP_PORT" "${members[@]}" > "$DIR/nginx/nginx.conf.new"
  /usr/sbin/nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf.new" -t -q
  if alive "$DIR/nginx/nginx.pid" && cmp -s "$DIR/nginx/nginx.conf" "$DIR/nginx/nginx.conf.new"; then
    rm "$DIR/nginx/nginx.conf.new"; log "nginx: running"; return
  fi
  mv "$DIR/nginx/nginx.conf.new" "$DIR/nginx/nginx.conf"
  if alive "$DIR/nginx/nginx.pid"; then
    /usr/sbin/nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -s reload
    log "nginx: reloaded with ${#members[@]} member(s)"; return
  fi
  /usr/sbin/nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf"
  wait_port "$HTTP_PORT"
  log "nginx: http://127.0.0.1:$HTTP_PORT (volunteers: /, operator: /admin)"
}

stop_pidfile() {  # NAME PIDFILE
  if alive "$2"; then
    local pid
    pid="$(cat "$2")"
    kill "$pid"
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "$1: stopped"
  fi
  rm -f "$2"
}

case "$cmd" in
  start)
    start_redis
    start_postgres
    start_members
    start_nginx
    ;;
  stop)
    stop_pidfile nginx "$DIR/nginx/nginx.pid"
    for pidfile in "$DIR"/member-*/webfl.pid; do
      [ -e "$pidfile" ] && stop_pidfile "member $(basename "$(dirname "$pidfile")")" "$pidfile"
    done
    if [ -f "$DIR/postgres/data/postmaster.pid" ]; then
      as_pg "$(pg_bin)/pg_ctl" stop -w -m fast -D "$DIR/postgres/data" >/dev/null && log "postgres: stopped"
    fi
    stop_pidfile redis "$DIR/redis/redis.pid"
    ;;
  status)
    alive "$DIR/redis/redis.pid" && log "redis: running" || log "redis: stopped"
    [ -f "$DIR/postgres/data/postmaster.pid" ] && log "postgres: running" || log "postgres: stopped"
    for pidfile in "$DIR"/member-*/webfl.pid; do
      [ -e "$pidfile" ] && { alive "$pidfile" && log "$(basename "$(dirname "$pidfile")"): running" || log "$(basename "$(dirname "$pidfile")"): stopped"; }
    done
    alive "$DIR/nginx/nginx.pid" && log "nginx: running" || log "nginx: stopped"
    ;;
  *) usage ;;
esac
