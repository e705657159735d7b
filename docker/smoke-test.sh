#!/usr/bin/env bash
# Docker smoke test: builds the image, checks that the production gateway refuses to start without
# UPSTREAM_API_KEY, runs docker-compose.yml with the demo profile (gateway + Redis + simulator) and sends
# predictions through the gateway, then checks Redis holds their terminal record.
#
#   bash docker/smoke-test.sh
#
# - The engine comes from ../shared/tools/docker-offline.sh (beside the repo): a private dockerd whose
#   containers get only the host network, so docker/compose.smoke.yml puts every service on the host
#   network on free 127.0.0.1 ports. No traffic goes anywhere but loopback.
# - Runs on a copy of the work tree (tracked + untracked, not ignored files) with no .env, exactly as on a
#   fresh clone: the demo must need none, and a developer's own .env never leaks in.
# - Unique compose project; `down -v` always runs. Every wait is bounded; the whole run stays under
#   SMOKE_BUDGET_S (default 570 s), cold machine included.
# - If the Docker engine cannot be started at all, prints one "SMOKE TEST SKIPPED" line and exits 0. But a
#   skip fails (exit 1) with SMOKE_REQUIRED=1, which is the default under CI=true when docker-offline.sh is
#   there: CI must not pass without building the image. Any failure after the engine is up exits 1.
# - A dockerd that this script started is stopped at the end (SMOKE_KEEP_DOCKERD=1 keeps it); one that
#   was already running is left alone. The image fuhu-gateway:smoke stays as the build cache.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUDGET=${SMOKE_BUDGET_S:-570}
STEP_TIMEOUT_ENGINE=${SMOKE_ENGINE_TIMEOUT_S:-300}
START=$SECONDS
KEY=fgw_demo_key_not_for_production
MODEL=black-forest-labs/flux-schnell

say() { printf '[smoke %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() {
  say "FAILED: $*"
  exit 1
}
# Seconds left in the budget, capped at $1: every wait uses this, so the total is bounded too.
left() {
  local rem=$((BUDGET - (SECONDS - START)))
  [ "$rem" -gt 1 ] || rem=1
  if [ "$rem" -lt "$1" ]; then echo "$rem"; else echo "$1"; fi
}

# ---------------------------------------------------------------------------------------------------------
# 1. The engine. Skipping is allowed only here.
# ---------------------------------------------------------------------------------------------------------
TOOL=$ROOT/../shared/tools/docker-offline.sh
ENGINE_LOG=$(mktemp -t smoke-engine.XXXXXX)
started_dockerd=0
REQUIRED=${SMOKE_REQUIRED:-}
if [ -z "$REQUIRED" ]; then
  if [ "${CI:-}" = true ] && [ -f "$TOOL" ]; then REQUIRED=1; else REQUIRED=0; fi
fi
skip() {
  if [ "$REQUIRED" = 1 ]; then
    echo "SMOKE TEST FAILED: docker engine unavailable ($*), and a skip does not count (SMOKE_REQUIRED=1${CI:+, CI=$CI})"
  else
    echo "SMOKE TEST SKIPPED: docker engine unavailable on this machine ($*)"
  fi
  # A start that failed half way may have left its dockerd running.
  if [ "$started_dockerd" = 1 ] && [ -f "$TOOL" ]; then timeout 60 bash "$TOOL" stop >/dev/null 2>&1 || true; fi
  rm -f "$ENGINE_LOG"
  [ "$REQUIRED" = 1 ] && exit 1
  exit 0
}
if [ -f "$TOOL" ]; then
  dockerd_dir=${DOCKER_OFFLINE_DIR:-/var/tmp/docker-offline}/dockerd
  if ! { [ -f "$dockerd_dir/dockerd.pid" ] && kill -0 "$(cat "$dockerd_dir/dockerd.pid")" 2>/dev/null; }; then
    started_dockerd=1
  fi
  # docker-offline.sh copies npm from `npm root -g`; with Node 24 linked at /usr/local/bin/node (node24.sh)
  # npm would answer /opt/node24/lib/node_modules, where there is no npm. Point it at npm's real prefix.
  npm_prefix=
  if npm_js=$(readlink -f "$(command -v npm 2>/dev/null)" 2>/dev/null) && [[ $npm_js == */lib/node_modules/npm/* ]]; then
    npm_prefix=${npm_js%/lib/node_modules/npm/*}
  fi
  say "starting the Docker engine (docker-offline.sh; log: $ENGINE_LOG)"
  if ! engine_env=$(npm_config_prefix=${npm_prefix:-${npm_config_prefix:-}} \
    timeout "$STEP_TIMEOUT_ENGINE" bash "$TOOL" start 2>"$ENGINE_LOG"); then
    skip "docker-offline.sh start failed: $(grep -v '^I: ' "$ENGINE_LOG" | tail -n 1)"
  fi
  eval "$engine_env"
  export DOCKER_HOST
elif ! timeout 10 docker info >/dev/null 2>&1; then
  skip "no $TOOL and no running docker"
fi
if command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_BIN=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_BIN=(docker compose)
else
  skip "neither docker-compose nor docker compose is installed"
fi
# docker-compose v1 builds through the daemon API (legacy builder): no BuildKit frontend pulls.
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
say "engine ready ($("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null || echo '?'), ${COMPOSE_BIN[*]})"

# ---------------------------------------------------------------------------------------------------------
# 2. A copy of the work tree, ports, project name.
# ---------------------------------------------------------------------------------------------------------
STAGE=$(mktemp -d -t fgw-smoke.XXXXXX)
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) |
    tar -C "$ROOT" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$STAGE" -xf -
else
  tar -C "$ROOT" --exclude=./node_modules --exclude=./dist --exclude=./.git --exclude=./.env -cf - . | tar -C "$STAGE" -xf -
fi
# As on a fresh clone: no .env (the copy takes no ignored file, so only a non-git tree could bring one).
rm -f "$STAGE/.env"
# docker-compose v1 (docker-py) refuses `ports:` together with network_mode: host ("incompatible with
# port_bindings") and an override file cannot remove a list entry, so the copy drops the publish mapping,
# which host networking makes meaningless anyway. Nothing else of docker-compose.yml changes.
awk '/^    ports:[[:space:]]*$/ { skip = 1; next } skip && /^      - / { next } { skip = 0; print }' \
  "$ROOT/docker-compose.yml" >"$STAGE/docker-compose.yml"

free_port() {
  node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}
SMOKE_GATEWAY_PORT=$(free_port)
SMOKE_REDIS_PORT=$(free_port)
SMOKE_SIMULATOR_PORT=$(free_port)
while [ "$SMOKE_REDIS_PORT" = "$SMOKE_GATEWAY_PORT" ]; do SMOKE_REDIS_PORT=$(free_port); done
while [ "$SMOKE_SIMULATOR_PORT" = "$SMOKE_GATEWAY_PORT" ] || [ "$SMOKE_SIMULATOR_PORT" = "$SMOKE_REDIS_PORT" ]; do
  SMOKE_SIMULATOR_PORT=$(free_port)
done
export SMOKE_GATEWAY_PORT SMOKE_REDIS_PORT SMOKE_SIMULATOR_PORT
PROJECT=fgwsmoke$(date +%s)$$
GW=http://127.0.0.1:$SMOKE_GATEWAY_PORT
say "project $PROJECT: gateway :$SMOKE_GATEWAY_PORT, redis :$SMOKE_REDIS_PORT, simulator :$SMOKE_SIMULATOR_PORT"

# compose SECONDS ARGS...: the stack's compose command, bounded.
compose() {
  local t=$1
  shift
  (cd "$STAGE" && timeout "$t" "${COMPOSE_BIN[@]}" -p "$PROJECT" -f docker-compose.yml -f docker/compose.smoke.yml --profile demo "$@")
}

compose_up=0
cleanup() {
  local rc=$?
  set +e
  if [ "$compose_up" = 1 ]; then
    if [ "$rc" != 0 ]; then
      say "logs of the failed run:"
      compose 30 logs --no-color --tail=80 2>&1 | sed 's/^/    /'
    fi
    say "compose down -v"
    compose 90 down -v --remove-orphans --timeout 15 >/dev/null 2>&1 || say "warning: compose down failed"
  fi
  rm -rf "$STAGE"
  if [ "$started_dockerd" = 1 ] && [ "${SMOKE_KEEP_DOCKERD:-0}" != 1 ] && [ -f "$TOOL" ]; then
    timeout 60 bash "$TOOL" stop >/dev/null 2>&1 || true
  fi
  rm -f "$ENGINE_LOG"
  if [ "$rc" = 0 ]; then say "PASSED in $((SECONDS - START))s"; else say "smoke test failed (exit $rc) after $((SECONDS - START))s"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------
# 3. Build and start.
# ---------------------------------------------------------------------------------------------------------
(cd "$STAGE" && timeout 30 "${COMPOSE_BIN[@]}" -f docker-compose.yml config -q) || die "docker-compose.yml does not validate"
# The gateway service passes every setting of .env.example through, bar the two the image fixes.
for var in $(sed -n 's/^\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$STAGE/.env.example"); do
  case $var in PORT | HOST) continue ;; esac
  grep -qE "^      $var:" "$STAGE/docker-compose.yml" || die "docker-compose.yml: the gateway's environment lacks $var (in .env.example)"
done
compose 30 config -q || die "docker-compose.yml + docker/compose.smoke.yml do not validate"
# Output is taken whole before grep -q reads it: under pipefail, a writer still writing when grep -q has found its
# match and quit dies of SIGPIPE, and the pipeline fails although the line was there.
config=$(compose 30 config)
! grep -qE '^ +ports:' <<<"$config" || die "a service still publishes ports, which host networking rejects"

say "building the image (npm ci + tsc inside; cold: a few minutes)"
BUILD_LOG=$STAGE/build.log
if ! compose "$(left 420)" build gateway >"$BUILD_LOG" 2>&1; then
  tail -n 40 "$BUILD_LOG" | sed 's/^/    /'
  die "image build failed"
fi
"$DOCKER" image inspect fuhu-gateway:smoke >/dev/null 2>&1 || die "image fuhu-gateway:smoke missing after the build"
say "image built: $("$DOCKER" image inspect -f '{{.Size}}' fuhu-gateway:smoke | awk '{printf "%.0f MB", $1/1e6}'), user $("$DOCKER" image inspect -f '{{.Config.User}}' fuhu-gateway:smoke)"

compose_up=1
# Production (no key, no simulator): the gateway must stop at once and name the missing setting. Without
# DEMO_UPSTREAM_BASE_URL, gateway-start.sh looks for the host "simulator", which the host network lacks.
say "production gateway without UPSTREAM_API_KEY"
prod_rc=0
prod_out=$(compose "$(left 60)" run --rm --no-deps -T -e DEMO_UPSTREAM_BASE_URL= gateway 2>&1) || prod_rc=$?
[ "$prod_rc" = 1 ] && [[ $prod_out == *'invalid configuration: UPSTREAM_API_KEY is required'* ]] ||
  die "without UPSTREAM_API_KEY the gateway should exit 1 naming it; it exited $prod_rc: $(tail -n 5 <<<"$prod_out")"
say "refused: $(grep -o 'fuhu-gateway: invalid configuration: UPSTREAM_API_KEY[^"]*' <<<"$prod_out" | head -n 1)"

say "compose up (demo profile)"
compose "$(left 120)" up -d --no-build >"$STAGE/up.log" 2>&1 || {
  sed 's/^/    /' "$STAGE/up.log"
  die "compose up failed"
}

# ---------------------------------------------------------------------------------------------------------
# 4. The request path.
# ---------------------------------------------------------------------------------------------------------
cid() { compose 30 ps -q "$1" 2>/dev/null | head -n 1; }
state() { "$DOCKER" inspect -f '{{.State.Status}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null || echo gone; }
GW_CID=$(cid gateway)
[ -n "$GW_CID" ] || die "no gateway container"

# JSON field by dotted path, from stdin (node: no jq needed).
json() { node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{let v=JSON.parse(s);for(const k of process.argv[1].split('.'))v=v==null?undefined:v[k];process.stdout.write(v===undefined?'':typeof v==='string'?v:JSON.stringify(v))})" "$1"; }

say "waiting for $GW/readyz"
deadline=$((SECONDS + $(left 90)))
ready=
while [ "$SECONDS" -lt "$deadline" ]; do
  ready=$(curl -fsS --max-time 2 "$GW/readyz" 2>/dev/null) && break
  ready=
  s=$(state "$GW_CID")
  case $s in running*) ;; *) die "gateway container is $s" ;; esac
  sleep 1
done
[ -n "$ready" ] || die "gateway not ready within 90s"
[ "$(json store <<<"$ready")" = redis ] || die "gateway is ready but not on the Redis store: $ready"
say "ready: $ready"
# Settings from docker/demo.env, as on a fresh clone: not from a .env, and not from the override file.
grep -q 'demo mode: no UPSTREAM_API_KEY is set' <<<"$("$DOCKER" logs "$GW_CID" 2>&1)" ||
  die "the gateway did not start in demo mode (docker/gateway-start.sh)"

say "POST /replicate/v1/models/$MODEL/predictions"
created=$(curl -sS --max-time 20 -w '\n%{http_code}' -X POST "$GW/replicate/v1/models/$MODEL/predictions" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"input":{"prompt":"smoke"}}') ||
  die "create request failed"
code=${created##*$'\n'}
body=${created%$'\n'*}
[ "$code" = 201 ] || [ "$code" = 200 ] || die "create answered HTTP $code: $body"
ID=$(json id <<<"$body")
[ -n "$ID" ] || die "create answered no id: $body"
say "created $ID ($(json status <<<"$body"))"

deadline=$((SECONDS + $(left 60)))
status=
while [ "$SECONDS" -lt "$deadline" ]; do
  got=$(curl -fsS --max-time 10 "$GW/replicate/v1/predictions/$ID" -H "Authorization: Bearer $KEY") ||
    die "GET /replicate/v1/predictions/$ID failed"
  status=$(json status <<<"$got")
  case $status in
    succeeded) break ;;
    failed | canceled | aborted) die "prediction ended $status: $got" ;;
  esac
  sleep 0.5
done
[ "$status" = succeeded ] || die "prediction still '$status' after 60s"
urls_get=$(json urls.get <<<"$got")
[ "$urls_get" = "$GW/replicate/v1/predictions/$ID" ] || die "urls.get is '$urls_get', expected the gateway's own URL"
say "succeeded; urls.get = $urls_get"

# The README's curl: one create with Prefer: wait answers with the finished prediction.
waited=$(curl -sS --max-time 70 -w '\n%{http_code}' -X POST "$GW/replicate/v1/models/$MODEL/predictions" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -H 'Prefer: wait' \
  -d '{"input":{"prompt":"a lighthouse at dawn"}}') || die "create with Prefer: wait failed"
code=${waited##*$'\n'}
body=${waited%$'\n'*}
[ "$code" = 201 ] || [ "$code" = 200 ] || die "create with Prefer: wait answered HTTP $code: $body"
[ "$(json status <<<"$body")" = succeeded ] || die "create with Prefer: wait answered status '$(json status <<<"$body")': $body"
say "Prefer: wait create answered $(json id <<<"$body") succeeded (HTTP $code)"

say "checking Redis keys fgw:rec:{p:$ID} and fgw:term:{p:$ID}"
deadline=$((SECONDS + $(left 20)))
rec=
term=
# One stored body per prediction: the end is written over the record, and term is the flag that serves it.
while [ "$SECONDS" -lt "$deadline" ]; do
  rec=$(compose 10 exec -T redis redis-cli -p "$SMOKE_REDIS_PORT" GET "fgw:rec:{p:$ID}" 2>/dev/null) || rec=
  term=$(compose 10 exec -T redis redis-cli -p "$SMOKE_REDIS_PORT" GET "fgw:term:{p:$ID}" 2>/dev/null) || term=
  [[ $rec == *'"status":"succeeded"'* && $term == 1 ]] && break
  sleep 1
done
[[ $rec == *'"status":"succeeded"'* ]] || die "Redis has no succeeded record under fgw:rec:{p:$ID} (got: ${rec:0:200})"
[[ $term == 1 ]] || die "Redis has no terminal flag under fgw:term:{p:$ID} (got: ${term:0:200})"
say "Redis holds the terminal prediction once (${#rec} bytes) and its cache flag"

# ---------------------------------------------------------------------------------------------------------
# 5. Health check and graceful stop (SIGTERM reaches node as PID 1).
# ---------------------------------------------------------------------------------------------------------
deadline=$((SECONDS + $(left 30)))
while [ "$SECONDS" -lt "$deadline" ] && [ "$(state "$GW_CID")" != running/healthy ]; do sleep 1; done
[ "$(state "$GW_CID")" = running/healthy ] || die "HEALTHCHECK: gateway container is $(state "$GW_CID"), not healthy"
say "HEALTHCHECK: gateway container healthy"

timeout "$(left 40)" "$DOCKER" stop -t 20 "$GW_CID" >/dev/null || die "docker stop gateway failed"
exit_code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$GW_CID")
[ "$exit_code" = 0 ] || die "gateway exited $exit_code on SIGTERM (137 = killed after the grace period)"
grep -q 'shutting down' <<<"$("$DOCKER" logs "$GW_CID" 2>&1)" || die "gateway log has no 'shutting down' line after SIGTERM"
say "SIGTERM: gateway shut down gracefully (exit 0)"
