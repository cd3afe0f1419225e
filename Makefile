# kvmprov: thin wrappers over the CLI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CONFIG     ?= vars/kvm-provisioning.yml
EXTRA_ARGS ?=
STAGE      ?=
NAME       ?=
TIMEOUT    ?=
KVMPROV    := target/release/kvmprov
RUN        := $(KVMPROV) -c $(CONFIG) $(EXTRA_ARGS)

.PHONY: help venv build deps deps-demo check ping image-cache provision provision-stage provision-check drift-check provision-drift-apply provision-drift-recreate \
        cleanup cleanup-force cleanup-force-disks status start stop stop-force restart console inventory schema schema-check deb deb-check test test-unit test-e2e test-remote demo demo-clean fuzz bench

help: ## List the targets
	@echo "kvmprov make targets (CONFIG=$(CONFIG); pass options with EXTRA_ARGS=\"-e key=value\"):"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-20s %s\n", $$1, $$2 }'

venv: build ## Same as build (the replaced project's `make venv` step)

build: ## Build the release binary (target/release/kvmprov)
	cargo build --release --locked

deps: ## Install host packages (apt) and make /dev/kvm usable without udev (needs root)
	bash testkit/install-deps.sh

check: build ## Validate the variables file offline (errors name line:column)
	$(RUN) check

ping: build ## Connect to the hypervisor: versions, domain types, networks
	$(RUN) ping

image-cache: build ## Download, verify and cache the images the instances use
	$(RUN) image-cache

provision: build ## Run kvm_provision_stage (default full: preflight, image-cache, provision, runtime)
	$(RUN) provision

provision-stage: build ## Run one stage: make provision-stage STAGE=image-cache
	@test -n "$(STAGE)" || { echo "usage: make provision-stage STAGE=preflight|image-cache|provision|runtime|full" >&2; exit 2; }
	$(RUN) provision --stage $(STAGE)

provision-check: build ## Preflight in check mode: report, change nothing
	$(RUN) --check preflight

drift-check: build ## Show the drift plan (per field: old -> new, live/restart/recreate/refused); changes nothing
	$(RUN) --check provision --stage provision

provision-drift-apply: build ## Provision and apply drift (live, or restart one guest at a time)
	$(RUN) -e kvm_drift_apply_confirmed=true provision

provision-drift-recreate: build ## Provision and apply drift, re-creating guests where needed (data disks kept), one at a time
	$(RUN) -e kvm_drift_apply_confirmed=true -e kvm_drift_recreate_confirmed=true provision

cleanup: build ## Show what cleanup would remove (changes nothing)
	$(RUN) cleanup

cleanup-force: build ## Remove the declared domains (disks kept)
	$(RUN) -e kvm_cleanup_confirmed=true cleanup

cleanup-force-disks: build ## Remove the declared domains and their disks, seeds and logs
	$(RUN) -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup

status: build ## Show the declared instances: state, IP, SSH, snapshots
	$(RUN) status

start: build ## Start the declared instances (or NAME=...) and wait for SSH and cloud-init
	$(RUN) start $(NAME)

stop: build ## Shut down the declared instances (or NAME=...) via ACPI; fails if one is still running after TIMEOUT (120 s)
	$(RUN) stop --timeout $(or $(TIMEOUT),120) $(NAME)

stop-force: build ## Like stop, then power off any instance still running after TIMEOUT
	$(RUN) stop --force --timeout $(or $(TIMEOUT),120) $(NAME)

restart: build ## Reboot the declared instances (or NAME=...) via ACPI; wait for a new boot, SSH and cloud-init
	$(RUN) restart --timeout $(or $(TIMEOUT),120) $(NAME)

console: build ## Attach to an instance's serial console: make console NAME=app-01 (Ctrl+] ends it)
	@test -n "$(NAME)" || { echo "usage: make console NAME=instance" >&2; exit 2; }
	$(RUN) console $(NAME)

inventory: build ## Print an Ansible inventory (YAML) of the running instances
	$(RUN) inventory --format yaml

schema: build ## Regenerate vars/kvm-provisioning.schema.json (the variables file's JSON Schema)
	$(KVMPROV) schema > vars/kvm-provisioning.schema.json

schema-check: build ## Validate the example and hostile variants (check-jsonschema from PyPI), and the generated cloud-init documents with cloud-init 22.4 and 25.1
	bash tests/schema-check.sh
	bash tests/cloud-init-schema.sh

deb: build ## Build target/debian/kvmprov_<version>_<arch>.deb (binary, man page, completions, docs)
	bash packaging/build-deb.sh

deb-check: ## Check the .deb: lintian, then install and run it in a fresh bookworm root (root, mmdebstrap)
	bash packaging/check-deb.sh

test: deps ## Run every check and test: fmt, clippy, unit, snapshots, schema, end-to-end, the .deb (needs root)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo build --release --locked
	cargo test --workspace --locked
	bash tests/schema-check.sh
	bash tests/cloud-init-schema.sh
	bash tests/e2e/run.sh
	bash packaging/build-deb.sh
	bash packaging/check-deb.sh

test-unit: ## Only the fast tests (no daemon, no guests)
	cargo test --workspace --locked

test-e2e: build ## Only the end-to-end tests, the remote one included (real libvirtds in namespaces, TCG guests; two lanes side by side, E2E_LANES=1 one after another); SCENARIOS="boot ansible" runs only those
	bash tests/e2e/run.sh $(SCENARIOS)

test-remote: build ## Only the two-hypervisor test (also SCENARIOS=remote) over qemu+ssh (namespaces, own libvirtds and sshds; one runs Debian 13's libvirt)
	bash tests/e2e/remote.sh

deps-demo: ## Install only what `make demo` needs (no test tools, no Recommends; needs root)
	bash testkit/install-deps.sh demo

demo: ## Install the demo's packages, build kvmprov and a Debian image, provision + SSH into a VM (no internet)
	bash testkit/demo.sh up

demo-clean: build ## Remove everything `make demo` created
	bash testkit/demo.sh down

fuzz: ## Property tests over hostile input with 100,000 cases per parser (make test runs 2,000)
	PROPTEST_CASES=100000 cargo test --release --locked --test properties

bench: deps build ## Benchmarks, one table: 10 instances vs the chain and the libvirt bound; 1 GiB download vs curl; boot to ready vs kcli, virt-lightning, virt-install; 2 disks + 2 NICs vs a plain instance; 10/50/100 instances on three hypervisors vs the bound
	bash tests/bench/run.sh
