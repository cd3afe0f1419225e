//! kvmprov-seed (being written)
