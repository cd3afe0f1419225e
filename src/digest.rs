//! The short SHA-256 keys kvmprov derives from text it owns: libvirt pool names from their
//! paths (`layout`), state file names from a hypervisor's URI (`state`), the definition digest
//! recorded in a domain's metadata (`provision`). Image digests are SHA-512 and belong to
//! `kvmprov_image::digest`; drift's salted digest of secrets is `drift`'s own.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-2's `abc` vector: the keys on disk and in domain metadata depend on it.
    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
