//! kvmprov-hypervisor (being written)
