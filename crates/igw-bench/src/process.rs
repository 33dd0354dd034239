//! Child processes and loopback ports of the real-time drivers.

use std::process::Child;

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Child processes, killed and reaped in reverse start order by [`stop`](Children::stop) or on drop.
#[derive(Debug, Default)]
pub(crate) struct Children(Vec<(String, Child)>);

impl Children {
    /// Adds a started child.
    pub(crate) fn push(&mut self, name: impl Into<String>, child: Child) {
        self.0.push((name.into(), child));
    }

    /// Kills and reaps every child.
    pub(crate) fn stop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}
