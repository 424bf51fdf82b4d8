# Sourced by perf/proxy.sh and perf/ops.sh: starts one of the forwarders they compare, each
# configured the same way in both (2 workers or threads, splice where the forwarder has it,
# half-close kept). Needs $work, $port, $backend and $ringsock set by the caller.

# Starts forwarder $1 listening on 127.0.0.1:$port and forwarding to the Unix socket
# $backend; sets $fwd_pid. $1 is one of the names below or the path of a ringsock binary.
start_forwarder() {
  case $1 in
    direct) fwd_pid="" ;;
    systemd-socket-proxyd)
      systemd-socket-activate -l 127.0.0.1:$port /lib/systemd/systemd-socket-proxyd --connections-max=10000 "$backend" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    ringsock|ringsock-base|/*)
      local bin=$1
      [ "$1" = ringsock ] && bin=$ringsock
      [ "$1" = ringsock-base ] && bin=$RINGSOCK_BASE
      # shellcheck disable=SC2086 # RINGSOCK_ARGS is a list of flags
      systemd-socket-activate -l 127.0.0.1:$port "$bin" proxy ${RINGSOCK_ARGS:-} --connections-max=10000 "$backend" \
        2>>"$work/$(basename "$1").log" &
      fwd_pid=$! ;;
    haproxy)
      cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 2
  maxconn 6000
defaults
  mode tcp
  timeout connect 10s
  timeout client 1h
  timeout server 1h
  option splice-auto
listen fwd
  bind 127.0.0.1:$port
  server backend unix@$backend
CFG
      haproxy -f "$work/haproxy.cfg" -db 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    nginx)
      cat > "$work/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
user root;
worker_rlimit_nofile 19000;
events { worker_connections 9000; }
stream {
  server {
    listen 127.0.0.1:$port backlog=4096;
    proxy_pass unix:$backend;
    proxy_half_close on;
    proxy_timeout 1h;
  }
}
CFG
      nginx -c "$work/nginx.conf" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    socat)
      socat TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr,backlog=4096 UNIX-CONNECT:"$backend" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
  esac
  sleep 0.5
}

# The thread-name prefix of forwarder $1's threads, for counting their work in the kernel.
forwarder_comm() {
  case $1 in
    systemd-socket-proxyd) echo systemd-socket- ;;
    haproxy|nginx|socat) echo "$1" ;;
    *) echo ringsock-w ;;
  esac
}
