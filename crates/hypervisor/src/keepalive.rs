//! How long a silent daemon is given: the connection sets keepalive with these numbers, and
//! errors quote the deadline when keepalive gave up. A module of its own so that both read it
//! without `connection` and `error` importing each other.

use std::time::Duration;

/// Keepalive: a ping after `KEEPALIVE_INTERVAL` seconds without a message from the daemon,
/// and the connection closed when `KEEPALIVE_COUNT` pings in a row go unanswered. A dead
/// daemon or a cut network then fails the call in progress after about
/// `interval × (count + 1)` = 30 s, instead of leaving it blocked forever (a CI run once saw
/// one call wait 14 minutes).
pub const KEEPALIVE_INTERVAL: i32 = 5;
pub const KEEPALIVE_COUNT: u32 = 5;

/// The longest a call can wait on a daemon that stopped answering, once keepalive runs.
pub fn keepalive_deadline() -> Duration {
    Duration::from_secs(KEEPALIVE_INTERVAL as u64 * (u64::from(KEEPALIVE_COUNT) + 1))
}
