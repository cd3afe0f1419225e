# Ansible helpers shared by tests/e2e/ansible.sh (local hypervisor) and tests/e2e/remote.sh
# (guests behind remote hypervisors). Sourced, not run.
#
# ansible-core comes from PyPI into a venv inside the test's scratch directory, which the test
# removes. Ansible runs with host key checking on and no ControlMaster: every run makes its own
# connections (a persisted master would let the refusal check pass without checking a key, and
# outlive the test).

# ansible_install VENV LOG: install ansible-core (outside any namespace: they have no route out).
ansible_install() {
    python3 -m venv "$1" && "$1/bin/pip" install -q ansible-core >"$2" 2>&1
}

# ansible_env HOME_DIR: the environment the Ansible runs get (printed as NAME=VALUE words).
ansible_env() {
    printf '%s\n' LC_ALL=C.UTF-8 "ANSIBLE_HOME=$1" "ANSIBLE_LOCAL_TEMP=$1/tmp" \
        ANSIBLE_HOST_KEY_CHECKING=True "ANSIBLE_SSH_ARGS=-o ControlMaster=no" \
        ANSIBLE_PYTHON_INTERPRETER=auto_silent ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=False
}

# ansible_dynamic_inventory FILE ARGS...: a two-line script running `kvmprov ARGS... inventory`.
ansible_dynamic_inventory() {
    local file=$1
    shift
    { echo '#!/bin/bash'; printf 'exec'; printf ' %q' "$@"; echo ' inventory "$@"'; } >"$file"
    chmod 0755 "$file"
}

# ansible_playbook FILE: two tasks, the host name is the inventory name and root writes a file.
ansible_playbook() {
    cat >"$1" <<'EOF'
- name: kvmprov guests
  hosts: all
  gather_facts: false
  tasks:
    - name: The guest's host name is its inventory name
      ansible.builtin.command: hostname
      register: hn
      changed_when: false
      failed_when: hn.stdout != inventory_hostname
    - name: Root writes a file through sudo
      become: true
      ansible.builtin.copy:
        dest: /etc/kvmprov-ansible
        content: "{{ inventory_hostname }}\n"
        mode: "0644"
EOF
}

# ansible_pinned_known_hosts INVENTORY_YAML HOST: the known_hosts file the static inventory
# pins for HOST.
ansible_pinned_known_hosts() {
    # The value is one ssh_config word in double quotes, JSON-escaped in the YAML: =\"/path\".
    grep -A4 "^    \"$2\":\$" "$1" | grep -o 'UserKnownHostsFile=\\"[^\\]*' | sed 's/^UserKnownHostsFile=\\"//' || true
}

# ansible_impostor_inventory INVENTORY_YAML HOST DIR: writes DIR/inventory-mismatch.yml, a copy
# of the inventory whose known_hosts for HOST holds another valid key for its address (what a
# guest impersonating it would present), and DIR/known_hosts.mismatch.
ansible_impostor_inventory() {
    local inv=$1 host=$2 dir=$3 kh
    kh=$(ansible_pinned_known_hosts "$inv" "$host")
    ssh-keygen -q -t ed25519 -N '' -C impostor -f "$dir/impostor" </dev/null
    printf '%s %s\n' "$(cut -d' ' -f1 "$kh")" "$(cut -d' ' -f1,2 "$dir/impostor.pub")" >"$dir/known_hosts.mismatch"
    sed "s#UserKnownHostsFile=\\\\\"$kh\\\\\"#UserKnownHostsFile=\\\\\"$dir/known_hosts.mismatch\\\\\"#" "$inv" >"$dir/inventory-mismatch.yml"
}

# ansible_all_succeeded OUTPUT HOST...: every HOST answered `| SUCCESS` in an ad-hoc run.
ansible_all_succeeded() {
    local out=$1 h
    shift
    for h in "$@"; do grep -q "^$h | SUCCESS" <<<"$out" || return 1; done
}

# ansible_play_ok LOG RC HOST...: the two-task playbook exited 0 with ok=2 changed=1 on each HOST.
ansible_play_ok() {
    local log=$1 rc=$2 h
    shift 2
    [ "$rc" -eq 0 ] || return 1
    for h in "$@"; do grep -Eq "^$h +: ok=2 +changed=1 .*failed=0" "$log" || return 1; done
}

# ansible_refused OUTPUT RC: the run failed because the host key did not match.
ansible_refused() {
    [ "$2" -ne 0 ] && grep -q "UNREACHABLE" <<<"$1" &&
        grep -Eq "REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed" <<<"$1"
}
