//! The crate's one integration test binary: against libvirt's test driver (always) and a
//! real libvirtd (only when configured, see `real_daemon`).

mod real_daemon;
mod test_driver;
