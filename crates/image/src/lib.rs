//! kvmprov-image (being written)
