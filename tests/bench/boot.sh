#!/usr/bin/env bash
# `make bench`, part 3: boot-to-ready of Debian 12's twin, one guest and four at once, in one run
# on one libvirtd, one image and libvirt's `default` NAT network, TCG, 1 vCPU and 1 GiB each:
#   kvmprov      provision (stage full), which returns when every guest is SSH-ready (pinned
#                host key) and cloud-init is done; times from its -v log
#   kcli         create vm -P wait=true (four: four at once), which returns when cloud-init's
#                final message (kcli's "kcli boot finished") is in the guest's log
#   virt-lightning  vl up, which returns when port 22 answers with an SSH banner; cloud-init
#                done is then waited for over SSH the way kvmprov waits
#   virt-install the replaced chain's minimal domain (qemu-img, cloud-localds, virt-install
#                --import), one guest, waited for the way kvmprov waits (port 22, login, cloud-init)
# Each time counts from the tool's start. Guest CPU seconds are the qemu processes' user + system
# time: kvmprov's as it logged them when cloud-init was done, virt-install's when the same wait
# returned (issue 27: kvmprov's domain <= 0.85x the chain's minimal domain), the peers' when
# their tool returned. Rows go to $BENCH_RESULTS (see tests/bench/run.sh).
# A peer that cannot work here gets one row saying why. Needs root, PyPI for the peers.
# BOOT_DOMAINS_ONLY=1: only the two one-guest rows that compare the domains (kvmprov's and the
# chain's minimal one). BOOT_PAIRS (default 2): how many times those two boot, one after the
# other, alternating; the guest CPU comparison is of their sums (a TCG guest's CPU seconds vary
# by up to ~15% from boot to boot on these machines, the same domain on the same image), each
# boot's figure and clocksource listed. ~3.5 minutes a pair.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../e2e/lib.sh"
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "the benchmark needs root" >&2; exit 2; }
BENCH_RESULTS=${BENCH_RESULTS:?set by tests/bench/run.sh}
MEM=1024
DISK=4
BOOT_PAIRS=${BOOT_PAIRS:-2}

E2E_DOMAINS="bk-one-01 bk-four-01 bk-four-02 bk-four-03 bk-four-04 kc-one kc-four-1 kc-four-2 kc-four-3 kc-four-4 vl-one vl-four-1 vl-four-2 vl-four-3 vl-four-4 vi-one"
E2E_POOLS_EXTRA="kcli-bench vl-bench"
bench_teardown() {
    set +e
    for p in $E2E_POOLS_EXTRA; do
        in_ns virsh -q -c qemu:///system pool-destroy "$p" >/dev/null 2>&1
        in_ns virsh -q -c qemu:///system pool-undefine "$p" >/dev/null 2>&1
    done
    # virt-lightning insists on this directory existing even with a pool of its own.
    [ -n "${VL_MADE_DIR:-}" ] && rm -rf /var/lib/virt-lightning
    e2e_teardown
}
trap bench_teardown EXIT
e2e_setup
virsh_ns() { in_ns virsh -q -c qemu:///system "$@"; }
probe_mark_set
row() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >>"$BENCH_RESULTS"; }
now() { date +%s.%N; }
# Seconds from $1 to $2 (epoch seconds, fractions allowed).
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.{sys.argv[3]}f}')" "$1" "$2" "${3:-1}"; }
# Stamp each line of stdin with the epoch time it arrived.
stamp() { python3 -u -c '
import sys, time
for line in sys.stdin:
    print(f"{time.time():.3f} {line}", end="")'; }
gone() { # destroy and undefine the named domains, so the next run has the CPUs to itself
    local d
    for d in "$@"; do
        virsh_ns destroy "$d" >/dev/null 2>&1 || true
        virsh_ns undefine "$d" --remove-all-storage >/dev/null 2>&1 || virsh_ns undefine "$d" >/dev/null 2>&1 || true
    done
    sleep 2
}
# The qemu process's CPU seconds (user + system) for domain $1: the guest's CPU seconds, read
# when cloud-init is done (kvmprov logs its own figure then). Compare them between guests booted
# under the same load, and with their clocksource in mind: a TCG guest whose kernel marks the
# TSC unstable (it happens at random when the host is busy) reads HPET or the ACPI PM timer
# from then on, an emulated device access each time, and its boot costs ~20% more.
# Read in each guest once cloud-init is done (after its CPU figure): tsc, or what the kernel
# fell back to when it marked the TSC unstable.
CLOCKSOURCE=/sys/devices/system/clocksource/clocksource0/current_clocksource
cpu_seconds() {
    local pid
    pid=$(cat "/run/libvirt/qemu/$1.pid" 2>/dev/null) || { echo 0; return; }
    awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$pid/stat" 2>/dev/null || echo 0
}

KEYDIR="$E2E_DIR/peer-home/.ssh"
mkdir -p "$KEYDIR"
ssh-keygen -q -t ed25519 -N '' -f "$KEYDIR/id_ed25519"
SSHO=(-i "$KEYDIR/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=5)

# How kvmprov waits for cloud-init (src/cloud_init.rs, WAIT_COMMAND): a shell loop until
# result.json is there. `cloud-init status --wait` would be a Python process polling in the
# booting guest, seconds of its CPU under TCG, and the domains are what is compared.
# shellcheck disable=SC2016 # expanded by the guest's shell
CI_WAIT='r=/run/cloud-init/result.json; i=0; while [ ! -s $r ] && [ $i -lt 1800 ]; do sleep 0.5; i=$((i+1)); done'
# The way kvmprov waits, for domains it did not make: the lease, port 22, a login, cloud-init.
# Prints "SSH_EPOCH DONE_EPOCH CPU_SECONDS ADDRESS" (the guest's CPU seconds when cloud-init was
# done); fails after 900 s without a login.
external_wait() { # domain user
    local ip="" ssh_t end=$((SECONDS + 900))
    while :; do
        [ "$SECONDS" -lt "$end" ] || return 1
        ip=$(virsh_ns domifaddr "$1" --source lease 2>/dev/null | awk '/ipv4/ {split($4, a, "/"); print a[1]; exit}')
        if [ -n "$ip" ] && in_ns nc -z -w 1 "$ip" 22 2>/dev/null &&
            in_ns ssh "${SSHO[@]}" "$2@$ip" true 2>/dev/null; then
            break
        fi
        sleep 0.25
    done
    ssh_t=$(now)
    in_ns ssh "${SSHO[@]}" "$2@$ip" "$CI_WAIT" >/dev/null 2>&1 || true
    echo "$ssh_t $(now) $(cpu_seconds "$1") $ip"
}

# --- kvmprov ------------------------------------------------------------------------------------
kv_cfg() { # file prefix count
    e2e_config_head "$E2E_DIR/images" "$E2E_DIR/$2" >"$1"
    for i in $(seq 1 "$3"); do
        echo "  - {instance_name: $2-$(printf %02d "$i"), image_name: debian-12, vcpus: 1, memory_mib: $MEM, disk_size_gib: $DISK}" >>"$1"
    done
}
# The epoch of the -v log line "NAME: WHAT …" (tracing's RFC 3339 UTC timestamp).
log_epoch() { # log name what
    local ts
    ts=$(grep -m1 " $2: $3" "$1" | awk '{print $1}')
    [ -n "$ts" ] && date -d "$ts" +%s.%N
}
# The epoch of the login: its line is written when the session that logged in returns (it goes
# on to wait for cloud-init), and says when the login came after the wait's start, as the port
# line does; so the port line's epoch plus the difference of the two.
login_epoch() { # log name
    local port after_port after_login
    port=$(log_epoch "$1" "$2" "port 22 open") || return 0
    after_port=$(grep -m1 " $2: port 22 open" "$1" | sed -n 's/.* after \([0-9.]*\)s$/\1/p')
    after_login=$(grep -m1 " $2: ssh login at" "$1" | sed -n 's/.* after \([0-9.]*\)s$/\1/p')
    [ -n "$port" ] && [ -n "$after_port" ] && [ -n "$after_login" ] &&
        python3 -c "import sys; print(float(sys.argv[1]) + float(sys.argv[3]) - float(sys.argv[2]))" "$port" "$after_port" "$after_login"
}
# The epoch of the address kvmprov logged in to: its last "NAME: address …" line before the
# login. The first can be a stale lease another guest with the same MAC left in dnsmasq's file
# (kvmprov asks again before each SSH attempt and logs "address changed").
address_epoch() { # log name
    local ts
    ts=$(awk -v n=" $2: " 'index($0, n "ssh login at") { exit } index($0, n "address ") { t = $1 } END { print t }' "$1")
    [ -n "$ts" ] && date -d "$ts" +%s.%N
}
# The guest's CPU seconds when cloud-init was done, as kvmprov logged them (libvirt's CPU time
# of the domain: its qemu process's user + system time); now, if the line has none.
done_cpu() { # log name
    local c
    c=$(grep -m1 " $2: cloud-init done" "$1" | sed -n 's/.*guest CPU \([0-9.]*\)s.*/\1/p')
    if [ -n "$c" ]; then echo "$c"; else cpu_seconds "$2"; fi
}
kvmprov_run() { # label prefix count
    local cfg="$E2E_DIR/$2.yml" t0 t1 ssh_last=0 done_last=0 n e cpu=0
    kv_cfg "$cfg" "$2" "$3"
    kp -c "$cfg" image-cache >/dev/null
    log "kvmprov: $3 guest(s)"
    t0=$(now)
    kp -c "$cfg" -v provision >"$E2E_DIR/$2.out" 2>"$E2E_DIR/$2.log" || { cat "$E2E_DIR/$2.log" >&2; return 1; }
    t1=$(now)
    for i in $(seq 1 "$3"); do
        n=$2-$(printf %02d "$i")
        cpu=$(python3 -c "print($cpu + $(done_cpu "$E2E_DIR/$2.log" "$n"))")
        e=$(login_epoch "$E2E_DIR/$2.log" "$n")
        ssh_last=$(fmax "$ssh_last" "$e")
        e=$(log_epoch "$E2E_DIR/$2.log" "$n" "cloud-init done")
        done_last=$(fmax "$done_last" "$e")
    done
    if [ "$3" -eq 1 ]; then
        row gcpu kvmprov "$cpu" "$(kp -c "$cfg" ssh "$2-01" -- cat "$CLOCKSOURCE" 2>/dev/null || echo unknown)"
    fi
    # A repeated pair: only its guest CPU figure.
    [ -z "${PAIR_AGAIN:-}" ] || { gone "$2-01"; return 0; }
    row boot "$1" kvmprov "$(since "$t0" "$ssh_last")" "$(since "$t0" "$done_last")" "$(since "$t0" "$t1")" "$cpu"
    KVMPROV_DONE=$(since "$t0" "$done_last")
    if [ "$3" -eq 1 ]; then
        n=$2-01
        row split kvmprov \
            "$(since "$t0" "$(address_epoch "$E2E_DIR/$2.log" "$n")")" \
            "$(since "$t0" "$(log_epoch "$E2E_DIR/$2.log" "$n" "port 22 open")")" \
            "$(since "$t0" "$(login_epoch "$E2E_DIR/$2.log" "$n")")" \
            "$(since "$t0" "$(log_epoch "$E2E_DIR/$2.log" "$n" "cloud-init done")")"
    fi
    # Everything present, the guests idle (cloud-init done): what a re-run costs.
    if [ "$3" -gt 1 ]; then
        t0=$(now)
        kp -c "$cfg" --output json provision --no-wait >/dev/null
        row rerun "$3 guests ready and idle" "$(since "$t0" "$(now)" 3)"
    fi
    local names=()
    for i in $(seq 1 "$3"); do names+=("$2-$(printf %02d "$i")"); done
    gone "${names[@]}"
}

# --- the peers' environment: a venv, their image and pools, a key -----------------------------
PEER_HOME="$E2E_DIR/peer-home"
VENV="$E2E_DIR/venv"
peers_ok=""
peer_why=""
if ! /usr/bin/python3 -c 'import libvirt, yaml, jinja2' 2>/dev/null; then
    peer_why="python3-libvirt, python3-yaml or python3-jinja2 missing (make deps installs them)"
elif ! /usr/bin/python3 -m venv --system-site-packages "$VENV" >/dev/null 2>&1; then
    peer_why="python3 -m venv failed (python3-venv)"
elif ! "$VENV/bin/pip" install -q --no-deps kcli virt-lightning prettytable argcomplete wcwidth >"$E2E_DIR/pip.log" 2>&1; then
    peer_why="pip install kcli virt-lightning failed: $(tail -n 1 "$E2E_DIR/pip.log")"
else
    peers_ok=1
    log "peers: $("$VENV/bin/pip" list 2>/dev/null | grep -iE '^(kcli|virt-lightning) ' | tr -s ' ' | paste -sd, -)"
fi
for p in kcli-bench vl-bench; do
    mkdir -p "$E2E_DIR/$p"
    chmod 0755 "$E2E_DIR/$p"
    virsh_ns pool-define-as "$p" dir --target "$E2E_DIR/$p" >/dev/null
    virsh_ns pool-start "$p" >/dev/null
done
mkdir -p "$E2E_DIR/vl-bench/upstream"
cp "$E2E_IMAGE_12" "$E2E_DIR/kcli-bench/debian12-twin.qcow2"
cp "$E2E_IMAGE_12" "$E2E_DIR/vl-bench/upstream/debian-12.qcow2"
virsh_ns pool-refresh kcli-bench >/dev/null
if [ ! -d /var/lib/virt-lightning ]; then
    mkdir -p /var/lib/virt-lightning/pool/upstream
    VL_MADE_DIR=1
fi
mkdir -p "$PEER_HOME/.kcli" "$PEER_HOME/.config/virt-lightning"
cat >"$PEER_HOME/.kcli/config.yml" <<EOF
default:
  client: local
  insecure: true
local:
  type: kvm
  host: 127.0.0.1
  pool: kcli-bench
EOF
cat >"$PEER_HOME/.config/virt-lightning/config.ini" <<EOF
[main]
libvirt_uri = qemu:///system
network_name = default
storage_pool = vl-bench
network_auto_clean_up = False
ssh_key_file = $KEYDIR/id_ed25519.pub
root_password = $(head -c 12 /dev/urandom | base64 | tr -d '/+=')
EOF
peer() { in_ns env HOME="$PEER_HOME" PATH="$VENV/bin:$PATH" PYTHONUNBUFFERED=1 "$@"; }

# Why kcli's guest $1 never got ready, when the reason is known; empty otherwise.
kcli_why() {
    local xml
    xml=$(virsh_ns dumpxml "$1" 2>/dev/null) || return 0
    # kcli attaches the cloud-init ISO as a SATA CD-ROM on x86 (no option changes it); Debian's
    # cloud kernel has no AHCI driver, so the guest never reads its seed: no network, no key.
    if grep -A6 "device='cdrom'" <<<"$xml" | grep -q "bus='sata'" &&
        [ -z "$(virsh_ns domifaddr "$1" --source lease 2>/dev/null | awk '/ipv4/')" ]; then
        echo "kcli puts the cloud-init ISO on a SATA CD-ROM (hard-coded for x86), which Debian's cloud kernel cannot see (no AHCI driver): the guest boots without its seed, so no network and no key"
    fi
}

# kcli: one `kcli create vm -P wait=true` per guest, all at once (its -c creates one after another).
# Its wait has no deadline: bounded here by twice kvmprov's one-guest time (at least 300 s).
kcli_run() { # label count
    local t0 t1 pids=() names=() i n ssh_last=0 e cpu=0 rc=0 why
    if [ -n "${KCLI_WHY:-}" ]; then
        row boot "$1" kcli "not run: $KCLI_WHY"
        return 0
    fi
    log "kcli: $2 guest(s), at most ${KCLI_LIMIT}s"
    t0=$(now)
    for i in $(seq 1 "$2"); do
        n=kc-$1-$i
        [ "$2" -eq 1 ] && n=kc-$1
        names+=("$n")
        peer timeout "$KCLI_LIMIT" kcli create vm -i debian12-twin.qcow2 -P virttype=qemu -P numcpus=1 -P memory=$MEM \
            -P "disks=[$DISK]" -P "nets=[default]" -P wait=true "$n" 2>&1 | stamp >"$E2E_DIR/$n.log" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    t1=$(now)
    for n in "${names[@]}"; do
        if ! grep -q "kcli boot finished" "$E2E_DIR/$n.log"; then
            why=$(kcli_why "$n")
            if [ -n "$why" ]; then
                KCLI_WHY=$why
                row boot "$1" kcli "failed: $why"
            else
                row boot "$1" kcli "failed: $(grep -v '^$' "$E2E_DIR/$n.log" | tail -n 1 | cut -d' ' -f2- | cut -c1-120)"
            fi
            gone "${names[@]}"
            return 0
        fi
        cpu=$(python3 -c "print($cpu + $(cpu_seconds "$n"))")
        # kcli prints this right after each check; the last one follows the login that worked.
        e=$(grep "Waiting for vm to be accessible" "$E2E_DIR/$n.log" | tail -n 1 | awk '{print $1}')
        ssh_last=$(fmax "$ssh_last" "${e:-0}")
    done
    [ "$rc" -eq 0 ] || log "kcli exited non-zero (see $E2E_DIR)"
    row boot "$1" kcli "$(since "$t0" "$ssh_last")" "$(since "$t0" "$t1")" "$(since "$t0" "$t1")" "$cpu"
    gone "${names[@]}"
}

# virt-lightning: `vl up` for a virt-lightning.yaml of the guests. It picks domain type kvm
# whenever libvirt offers it (it has no option), and real Debian guests crash under this
# machine's /dev/kvm: the wrapper below answers qemu instead, the only change.
vl_run() { # label count
    local t0 t_up t1 i n names=() ips=() pids=() ssh_last=0 e cpu=0
    log "virt-lightning: $2 guest(s)"
    : >"$E2E_DIR/vl.yaml"
    for i in $(seq 1 "$2"); do
        n=vl-$1-$i
        [ "$2" -eq 1 ] && n=vl-$1
        names+=("$n")
        printf -- '- {distro: debian-12, name: %s, memory: %s, vcpus: 1, disks: [{size: %s}]}\n' "$n" "$MEM" "$DISK" >>"$E2E_DIR/vl.yaml"
    done
    t0=$(now)
    if ! peer python3 -c '
import sys
import virt_lightning.virt_lightning as v
v.LibvirtHypervisor.domain_type = property(lambda self: "qemu")
from virt_lightning.shell import main
sys.argv = ["vl", "up", "--virt-lightning-yaml", sys.argv[1]]
sys.exit(main())' "$E2E_DIR/vl.yaml" 2>&1 | stamp >"$E2E_DIR/vl-$1.log"; then
        row boot "$1" virt-lightning "failed: $(tail -n 1 "$E2E_DIR/vl-$1.log" | cut -d' ' -f2- | cut -c1-120)"
        gone "${names[@]}"
        return 0
    fi
    t_up=$(now)
    for n in "${names[@]}"; do
        e=$(grep " $n found at" "$E2E_DIR/vl-$1.log" | awk '{print $1}')
        [ -n "$e" ] || { row boot "$1" virt-lightning "failed: $n never reported SSH ($(tail -n 1 "$E2E_DIR/vl-$1.log" | cut -c1-100))"; gone "${names[@]}"; return 0; }
        ssh_last=$(fmax "$ssh_last" "$e")
        ips+=("$(grep " $n found at" "$E2E_DIR/vl-$1.log" | sed 's/.* found at \([0-9.]*\).*/\1/')")
    done
    for ip in "${ips[@]}"; do
        in_ns ssh "${SSHO[@]}" "root@$ip" "$CI_WAIT" >/dev/null 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    t1=$(now)
    for n in "${names[@]}"; do cpu=$(python3 -c "print($cpu + $(cpu_seconds "$n"))"); done
    row boot "$1" virt-lightning "$(since "$t0" "$ssh_last")" "$(since "$t0" "$t1")" "$(since "$t0" "$t_up")" "$cpu"
    gone "${names[@]}"
}

# The chain's minimal domain (as in tests/bench/provision.sh), one guest, waited for from outside.
vi_run() {
    local n=vi-one d="$E2E_DIR/vi" t0 ts ssh_t done_t cpu
    log "virt-install: 1 guest"
    mkdir -p "$d"
    chmod 0755 "$d"
    t0=$(now)
    qemu-img create -q -f qcow2 -F qcow2 -b "$E2E_IMAGE_12" "$d/$n.qcow2" "${DISK}G"
    printf '#cloud-config\nhostname: %s\nssh_authorized_keys:\n  - %s\n' "$n" "$(cat "$KEYDIR/id_ed25519.pub")" >"$d/ud"
    printf 'instance-id: %s-1\nlocal-hostname: %s\n' "$n" "$n" >"$d/md"
    cloud-localds "$d/seed.iso" "$d/ud" "$d/md"
    in_ns virt-install --connect qemu:///system --import --name "$n" --memory "$MEM" --vcpus 1 \
        --disk "path=$d/$n.qcow2,format=qcow2,bus=virtio" \
        --disk "path=$d/seed.iso,device=cdrom,bus=scsi" \
        --controller scsi,model=virtio-scsi --network network=default --osinfo debian11 \
        --virt-type qemu --graphics none --noautoconsole --quiet >/dev/null
    if ! ts=$(external_wait "$n" debian); then
        row boot one virt-install "failed: no SSH login within 900 s"
        gone "$n"
        return 0
    fi
    read -r ssh_t done_t cpu ip <<<"$ts"
    row gcpu virt-install "$cpu" "$(in_ns ssh "${SSHO[@]}" "debian@$ip" cat "$CLOCKSOURCE" 2>/dev/null || echo unknown)"
    [ -n "${PAIR_AGAIN:-}" ] ||
        row boot one virt-install "$(since "$t0" "$ssh_t")" "$(since "$t0" "$done_t")" "$(since "$t0" "$done_t")" "$cpu"
    gone "$n"
}

# The two domains again, alternating, for the guest CPU comparison (see BOOT_PAIRS above).
pairs_again() {
    local p
    for p in $(seq 2 "$BOOT_PAIRS"); do
        log "pair $p of $BOOT_PAIRS: kvmprov's domain, then virt-install's"
        E2E_DOMAINS="$E2E_DOMAINS bk-p$p-01"
        PAIR_AGAIN=1 kvmprov_run one "bk-p$p" 1
        PAIR_AGAIN=1 vi_run
    done
}

kvmprov_run one bk-one 1
if [ -n "${BOOT_DOMAINS_ONLY:-}" ]; then
    vi_run
    pairs_again
    refuse_if_reprobed
    exit 0
fi
KCLI_LIMIT=$(python3 -c "print(max(300, round(2 * $KVMPROV_DONE)))")
if [ -n "$peers_ok" ]; then kcli_run one 1; vl_run one 1; else row boot one peers "cannot run here: $peer_why"; fi
vi_run
kvmprov_run four bk-four 4
if [ -n "$peers_ok" ]; then kcli_run four 4; vl_run four 4; fi
pairs_again
refuse_if_reprobed
