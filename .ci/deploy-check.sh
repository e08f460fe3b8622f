#!/usr/bin/env bash
# Checks the deployment kit in deploy/:
#  - the systemd unit with `systemd-analyze verify` (any warning fails);
#  - the nginx site and stream files with `nginx -t`, using a self-signed
#    certificate made on the spot;
#  - then runs nginx with them on spare loopback ports in front of the real
#    server and checks the page over HTTPS, the HTTP->HTTPS redirect, the
#    WebSocket upgrade through /ws, and TLS on the stream port.
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
# test run substituted; everything else exactly as shipped.
sed -e "s|/etc/letsencrypt/live/chat.example.com|$work|g" \
    -e "s|127.0.0.1:5000|127.0.0.1:$http_port|" \
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
if grep -nE 'letsencrypt|listen (80|443|2333)|:5000|:12333' "$work/site.conf" "$work/stream.conf"; then
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
"$bin" --http "127.0.0.1:$http_port" --ws "127.0.0.1:$ws_port" --data-dir "$work/data" \
  --argon2-memory-kib 8 --argon2-iterations 1 > "$work/logs/server.log" 2>&1 &
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

upgrade=$(curl -sk -i --max-time 3 --http1.1 \
  -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  "https://127.0.0.1:$https_port/ws" 2>/dev/null || true)
grep -q '^HTTP/1.1 101' <<<"$upgrade" || fail "no WebSocket upgrade through /ws: $upgrade"
grep -qi '^Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=' <<<"$upgrade" || fail "bad accept: $upgrade"

stream=$(curl -sk -i --max-time 3 --http1.1 \
  -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  "https://127.0.0.1:$stream_port/" 2>/dev/null || true)
grep -q '^HTTP/1.1 101' <<<"$stream" || fail "no WebSocket upgrade through the TLS stream port: $stream"

metrics=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$https_port/metrics")
[ "$metrics" = 200 ] || fail "/metrics from loopback: $metrics"

echo "deploy: page, redirect, /ws upgrade and TLS stream port work through nginx"
