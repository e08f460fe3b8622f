#!/usr/bin/env bash
# Checks the deployment kit in deploy/:
#  - the systemd unit with `systemd-analyze verify` (any warning fails);
#  - the nginx site and stream files with `nginx -t`, using a self-signed
#    certificate made on the spot;
#  - then runs nginx with them on spare loopback ports in front of the real
#    server (with the unit's --trusted-proxy) and checks the page over HTTPS,
#    the HTTP->HTTPS redirect, the WebSocket upgrade through /ws, TLS on the
#    stream port, and that clients behind nginx are told apart: one client
#    past the failed-login limit does not block another, and a forged
#    X-Forwarded-For changes nothing. The clients are curl bound to
#    127.0.0.2 to 127.0.0.5 (Linux routes all of 127.0.0.0/8 to loopback),
#    so nginx sees each at its own address.
# Installs nginx and its stream module when missing, without starting the
# distribution's nginx service.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/chatroom-deploy-check.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --bin chatroom
bin="$(cd "$target_dir" && pwd)/debug/chatroom"

# --- systemd unit -------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
  # The binary must exist for verify; point the unit at the one just built.
  sed "s|/usr/local/bin/chatroom|$bin|" deploy/chatroom.service > "$work/chatroom.service"
  out=$(systemd-analyze verify "$work/chatroom.service" 2>&1) || { echo "$out"; exit 1; }
  if [ -n "$out" ]; then
    echo "systemd-analyze verify complained:"; echo "$out"; exit 1
  fi
  echo "deploy: chatroom.service verified"
else
  echo "deploy: systemd-analyze not available; unit not verified"
fi

# --- nginx --------------------------------------------------------------
if ! command -v nginx >/dev/null 2>&1 || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  echo "deploy: installing nginx"
  apt-get update -qq
  # Keep the package scripts from starting nginx on port 80 of this machine.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-stream >/dev/null
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
http_port=$(free_port); ws_port=$(free_port)
https_port=$(free_port); plain_port=$(free_port); stream_port=$(free_port)

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=chat.example.com" \
  -keyout "$work/privkey.pem" -out "$work/fullchain.pem" 2>/dev/null

# The shipped files with the certificate, the ports and the upstreams of this
# test run substituted; everything else exactly as shipped, except the site's
# own /auth/ limit (about 20 a minute per address), which would stop one
# client long before the server's limit of 30 failed logins a minute that
# this check is about: it is raised here to let the server's limit answer.
sed -e "s|/etc/letsencrypt/live/chat.example.com|$work|g" \
    -e "s|127.0.0.1:5000|127.0.0.1:$http_port|" \
    -e "s|zone=chatroom_auth:10m rate=10r/m;|zone=chatroom_auth:10m rate=60000r/m;|" \
    -e "s|limit_req zone=chatroom_auth burst=10 nodelay;|limit_req zone=chatroom_auth burst=1000 nodelay;|" \
    -e "s|listen 80;|listen 127.0.0.1:$plain_port;|" \
    -e "s|listen 443 ssl http2;|listen 127.0.0.1:$https_port ssl http2;|" \
    -e "/listen \[::\]/d" \
    -e "s|root /var/www/html;|root $work/acme;|" \
    deploy/nginx-chatroom.conf > "$work/site.conf"
sed -e "s|/etc/letsencrypt/live/chat.example.com|$work|g" \
    -e "s|127.0.0.1:12333|127.0.0.1:$ws_port|" \
    -e "s|listen 2333 ssl;|listen 127.0.0.1:$stream_port ssl;|" \
    -e "/listen \[::\]/d" \
    deploy/nginx-chatroom-stream.conf > "$work/stream.conf"
# Make sure every substitution took: no production path or port is left.
if grep -nE 'letsencrypt|listen (80|443|2333)|:5000|:12333|rate=10r/m|burst=10 ' "$work/site.conf" "$work/stream.conf"; then
  echo "deploy: a substitution did not apply"; exit 1
fi

mkdir -p "$work/logs"
cat > "$work/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
pid $work/nginx.pid;
error_log $work/logs/error.log warn;
daemon off;
events { worker_connections 256; }
http {
    access_log $work/logs/access.log;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include $work/site.conf;
}
include $work/stream.conf;
EOF
nginx -t -q -p "$work" -c "$work/nginx.conf"
echo "deploy: nginx configuration is valid"

# --- the proxy in front of the real server ------------------------------
# The server trusts what the unit tells it to trust, so the checks below test
# the kit as shipped.
trust_args=()
for range in $(grep -oE -- '--trusted-proxy [^ \\]+' deploy/chatroom.service | cut -d' ' -f2); do
  trust_args+=(--trusted-proxy "$range")
done
[ "${#trust_args[@]}" -gt 0 ] || { echo "deploy: chatroom.service trusts no proxy"; exit 1; }
"$bin" --http "127.0.0.1:$http_port" --ws "127.0.0.1:$ws_port" --data-dir "$work/data" \
  --argon2-memory-kib 8 --argon2-iterations 1 "${trust_args[@]}" > "$work/logs/server.log" 2>&1 &
pids+=($!)
nginx -p "$work" -c "$work/nginx.conf" &
pids+=($!)

# Bounded wait for both (no fixed sleep).
for _ in $(seq 1 100); do
  if curl -skf -o /dev/null "https://127.0.0.1:$https_port/healthz"; then break; fi
  sleep 0.1
done

fail() { echo "deploy: $*"; cat "$work/logs/error.log" "$work/logs/server.log" || true; exit 1; }

page=$(curl -sk -H 'Host: chat.example.com' "https://127.0.0.1:$https_port/") || fail "no page over HTTPS"
grep -q 'data-testid="messages"' <<<"$page" || fail "the page over HTTPS is not the chat client"

registered=$(curl -sk -H 'Host: chat.example.com' -d 'user_tel=13800000000&user_name=ann&user_password=secret1' \
  "https://127.0.0.1:$https_port/auth/register")
[ "$registered" = '{"res":"register successfully"}' ] || fail "register through /auth/: $registered"

redirect=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' -H 'Host: chat.example.com' \
  "http://127.0.0.1:$plain_port/chatroom/list")
[ "$redirect" = "301 https://chat.example.com/chatroom/list" ] || fail "HTTP redirect: $redirect"

# The upgrades come from clients of their own (127.0.0.4 and .5), each with a
# forged X-Forwarded-For; the server's close lines below show whom it saw.
forged=203.0.113.77
upgrade=$(curl -sk -i --max-time 3 --http1.1 --interface 127.0.0.4 -H "X-Forwarded-For: $forged" \
  -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  "https://127.0.0.1:$https_port/ws" 2>/dev/null || true)
grep -q '^HTTP/1.1 101' <<<"$upgrade" || fail "no WebSocket upgrade through /ws: $upgrade"
grep -qi '^Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=' <<<"$upgrade" || fail "bad accept: $upgrade"

stream=$(curl -sk -i --max-time 3 --http1.1 --interface 127.0.0.5 -H "X-Forwarded-For: $forged" \
  -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  "https://127.0.0.1:$stream_port/" 2>/dev/null || true)
grep -q '^HTTP/1.1 101' <<<"$stream" || fail "no WebSocket upgrade through the TLS stream port: $stream"

metrics=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$https_port/metrics")
[ "$metrics" = 200 ] || fail "/metrics from loopback: $metrics"

echo "deploy: page, redirect, /ws upgrade and TLS stream port work through nginx"

# --- clients behind the proxy are told apart ----------------------------
# A failed login from source address $1, for phone number $2, with any
# further curl arguments; prints the answer.
login_from() {
  local from=$1 tel=$2; shift 2
  curl -sk --interface "$from" -H 'Host: chat.example.com' "$@" \
    "https://127.0.0.1:$https_port/auth/login?user_tel=$tel&user_password=guess1234"
}
not_exist='{"res":"user not exist","data":null}'
too_many='{"res":"too many attempts","data":null}'
# 127.0.0.2 uses up its 30 failed logins a minute (unknown phone numbers, so
# no account limit is involved) ...
for n in $(seq 1 30); do
  answer=$(login_from 127.0.0.2 "1390000$(printf %04d "$n")")
  [ "$answer" = "$not_exist" ] || fail "failed login $n from 127.0.0.2: $answer"
done
answer=$(login_from 127.0.0.2 13900009999)
[ "$answer" = "$too_many" ] || fail "31st failed login from 127.0.0.2 was not refused: $answer"
# ... and cannot get out of it by claiming another address ...
answer=$(login_from 127.0.0.2 13900009999 -H 'X-Forwarded-For: 127.0.0.3' -H 'X-Real-IP: 127.0.0.3')
[ "$answer" = "$too_many" ] || fail "a forged X-Forwarded-For escaped the limit: $answer"
# ... while 127.0.0.3, behind the same nginx, is not blocked.
answer=$(login_from 127.0.0.3 13900009999)
[ "$answer" = "$not_exist" ] || fail "127.0.0.3 was blocked by 127.0.0.2's failures: $answer"
answer=$(login_from 127.0.0.3 13800000000)
[ "$answer" = '{"res":"password wrong","data":null}' ] || fail "wrong password from 127.0.0.3: $answer"

# The WebSocket through /ws was 127.0.0.4's; the one through the stream port
# came from the stream proxy's own 127.0.0.2, which is not trusted, so its
# forged header was not read either. (Bounded wait for the close lines.)
closed_as() { grep -q "closed peer=$1:[0-9]* client=$2 protocol=websocket " "$work/logs/server.log"; }
for _ in $(seq 1 100); do
  if closed_as 127.0.0.1 127.0.0.4 && closed_as 127.0.0.2 127.0.0.2; then break; fi
  sleep 0.1
done
closed_as 127.0.0.1 127.0.0.4 || fail "the /ws WebSocket was not logged as 127.0.0.4's"
closed_as 127.0.0.2 127.0.0.2 || fail "the stream port's WebSocket was not logged as the stream proxy's"
if grep -q "$forged" "$work/logs/server.log"; then fail "a forged address reached the log"; fi

echo "deploy: clients behind nginx have their own login limits; forged X-Forwarded-For is ignored"
