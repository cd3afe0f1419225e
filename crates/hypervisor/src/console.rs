//! A domain's serial console as a libvirt stream: what `virsh console` reads, through the same
//! connection, so it works the same on a remote hypervisor (no SSH session of our own).
//!
//! The stream is blocking: one thread may wait in [`Console::recv`] while another sends.

use virt::stream::Stream;

use crate::error::lv;
use crate::{HvError, Hypervisor};

/// An open console of one domain. Dropping it closes the stream.
pub struct Console {
    stream: Stream,
    name: String,
}

impl Hypervisor {
    /// Attach to the domain's first console (its serial port). Fails when another session is
    /// attached (libvirt allows one), or the domain is not running.
    pub fn open_console(&self, name: &str) -> Result<Console, HvError> {
        let what = format!("open the serial console of domain {name}");
        let stream = Stream::new(&self.conn, 0).map_err(lv(what.clone()))?;
        self.lookup_domain(name)?
            .open_console(None, &stream, 0)
            .map_err(lv(what))?;
        Ok(Console {
            stream,
            name: name.to_string(),
        })
    }
}

impl Console {
    /// The next bytes the guest wrote (blocks until there are some); 0: the console closed
    /// (the domain stopped).
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, HvError> {
        let n = self
            .stream
            .recv(buf)
            .map_err(lv(format!("read the console of domain {}", self.name)))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Send all of `data` to the guest.
    pub fn send(&self, mut data: &[u8]) -> Result<(), HvError> {
        while !data.is_empty() {
            let n = self
                .stream
                .send(data)
                .map_err(lv(format!("write to the console of domain {}", self.name)))?;
            let n = usize::try_from(n).unwrap_or(0).min(data.len());
            if n == 0 {
                break;
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// Close the stream (libvirt releases the console for the next session).
    pub fn close(&self) {
        // A clone shares the stream; aborting it wakes a thread waiting in `recv`.
        let _ = self.stream.clone().abort();
    }
}
