# Shared helpers of the benchmarks in scripts/bench/ (sourced, not run). Bash 5.
#
# - bench_nginx_*: an nginx origin in its own prefix (RECIPES §1), foreground master whose PID we hold.
# - bench_cpu_*: CPU accounting from /proc/stat, to tell whether other load on the machine disturbed a run.
# - bench_median, bench_fmt: numbers.

BENCH_CLK_TCK=$(getconf CLK_TCK)

bench_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bench_warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bench_die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- nginx -------------------------------------------------------------------------------------------------

# bench_nginx_config PREFIX LISTEN ROOT: writes PREFIX/nginx.conf for a static origin on LISTEN (IP:port) serving
# ROOT with sendfile. The access log records, per request, the status, the bytes sent (headers + body) and the
# body bytes, so a benchmark can check what reached each client.
bench_nginx_config() {
    local prefix=$1 listen=$2 root=$3
    mkdir -p "$prefix/logs" "$prefix/tmp"
    cat >"$prefix/nginx.conf" <<EOF
user root;
worker_processes auto;
daemon off;
pid $prefix/logs/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 256; }
http {
    log_format bench '\$msec \$remote_addr \$status \$request_method "\$http_range" \$bytes_sent \$body_bytes_sent \$request_time';
    access_log $prefix/logs/access.log bench;
    client_body_temp_path $prefix/tmp/body;  proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;   uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    types { application/octet-stream bin; }
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 10000;
    server {
        listen $listen;
        root $root;
        etag on;
    }
}
EOF
}

# bench_nginx_start PREFIX [RUNNER...]: starts nginx in the foreground under RUNNER (e.g. `scripts/netlab exec
# LAB origin`, which execs, so $! is nginx's master) and sets BENCH_NGINX_PID to the master's PID. Call it
# directly, not in $(…), so the master stays our child.
bench_nginx_start() {
    local prefix=$1
    shift
    "$@" nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log" \
        >>"$prefix/logs/stdout.log" 2>&1 </dev/null &
    BENCH_NGINX_PID=$!
}

# bench_nginx_stop PID: graceful stop, then a kill after 5 s.
bench_nginx_stop() {
    local pid=$1 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -QUIT "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

# bench_nginx_cpu_ticks PID: user+system clock ticks of the nginx master and its workers so far.
bench_nginx_cpu_ticks() {
    local master=$1 pid total=0 fields
    for pid in "$master" $(cat "/proc/$master/task/$master/children" 2>/dev/null); do
        fields=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        fields=${fields##*) }    # drop "pid (comm) "
        read -r -a f <<<"$fields"
        # after the comm: state=0 … utime=11 stime=12
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# bench_nginx_log_lines PREFIX: current number of access-log lines (to slice one measurement's requests).
bench_nginx_log_lines() { wc -l <"$1/logs/access.log"; }

# bench_nginx_log_slice PREFIX FROM: "requests body_bytes statuses" of the access-log lines after line FROM.
bench_nginx_log_slice() {
    tail -n +"$(($2 + 1))" "$1/logs/access.log" | awk '
        { n++; body += $7; st[$3]++ }
        END { s = ""; for (k in st) s = s (s == "" ? "" : ",") k "x" st[k]; printf "%d %d %s\n", n, body, (s == "" ? "-" : s) }'
}

# --- CPU accounting ----------------------------------------------------------------------------------------

# bench_cpu_snapshot: "total idle softirq" jiffies of all CPUs (idle includes iowait).
bench_cpu_snapshot() {
    local _cpu user nice system idle iowait irq softirq steal rest
    read -r _cpu user nice system idle iowait irq softirq steal rest </proc/stat
    echo "$((user + nice + system + idle + iowait + irq + softirq + steal)) $((idle + iowait)) $softirq"
}

# bench_cpu_idle BEFORE AFTER OURS_SECONDS: prints "raw_idle_pct free_pct". raw is the machine's idle share;
# free is the share not used by anything but the measured processes: idle + their CPU (OURS_SECONDS, e.g. from
# /usr/bin/time plus the origin's) + softirq (packet processing on their behalf). A run is disturbed when
# other load left it less than 25 % free.
bench_cpu_idle() {
    local -a b a
    read -r -a b <<<"$1"
    read -r -a a <<<"$2"
    awk -v t=$((a[0] - b[0])) -v i=$((a[1] - b[1])) -v s=$((a[2] - b[2])) -v ours="$3" -v hz="$BENCH_CLK_TCK" 'BEGIN {
        if (t <= 0) { print "100.0 100.0"; exit }
        free = (i + s + ours * hz) / t * 100; if (free > 100) free = 100
        printf "%.1f %.1f\n", i / t * 100, free }'
}

# bench_wait_quiet MAX_SECONDS MIN_IDLE_PCT: waits (up to MAX_SECONDS) until a 2-second sample of the machine
# shows at least MIN_IDLE_PCT idle; returns 1 if it never did.
bench_wait_quiet() {
    local max=$1 want=$2 start=$SECONDS b a idle warned=0
    while :; do
        b=$(bench_cpu_snapshot)
        sleep 2
        a=$(bench_cpu_snapshot)
        idle=$(bench_cpu_idle "$b" "$a" 0 | awk '{ print $1 }')
        awk -v i="$idle" -v w="$want" 'BEGIN { exit !(i >= w) }' && return 0
        if ((SECONDS - start >= max)); then
            bench_warn "machine still busy (idle ${idle} % < ${want} %) after ${max} s; measuring anyway"
            return 1
        fi
        ((warned)) || bench_log "machine busy (idle ${idle} %); waiting up to ${max} s for ${want} % idle"
        warned=1
    done
}

# --- numbers -----------------------------------------------------------------------------------------------

# bench_median V...: median of the numeric arguments ("-" and empty ones are skipped; none gives "-").
bench_median() {
    printf '%s\n' "$@" | awk '$1 != "-" && $1 != "" { print $1 }' | sort -g | awk '
        { v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_min V...
bench_min() { printf '%s\n' "$@" | awk '$1 != "-" && $1 != ""' | sort -g | head -1; }

# bench_fmt FORMAT V: printf with "-" passed through.
bench_fmt() { if [[ $2 == - || -z $2 ]]; then echo -; else awk -v f="$1" -v v="$2" 'BEGIN { printf f, v }'; fi; }

# bench_ratio A B FORMAT: A / B, or "-".
bench_ratio() {
    if [[ $1 == - || $2 == - || -z $1 || -z $2 ]]; then echo -; else awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (b == 0) print "-"; else printf f, a / b }'; fi
}
