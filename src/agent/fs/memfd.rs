//! One secret version's bytes in a locked, anonymous memory file (`memfd_create`): the backing
//! file FUSE passthrough reads from (see [`super::passthrough`]).
//!
//! - **Never on disk**: a memfd lives in shmem (no path, no filesystem on disk).
//! - **Never in swap**: the agent maps the file and `mlock`s the mapping, which pins the very
//!   pages the kernel reads for passthrough (the file's page cache *is* the mapping); creating
//!   one fails when the pages cannot be locked.
//! - **Wiped**: [`Memfd::wipe`] (and `Drop`) truncates the file to 0 bytes, which takes its
//!   pages out of the file at once: from then on every read of every handle backed by it —
//!   including handles readers still hold open — returns end-of-file, and a reader's mapping of
//!   it faults (SIGBUS). Zeroing the bytes first would let a read racing the wipe return zeros
//!   in place of the value, so the pages are dropped instead (the kernel frees them, as it
//!   frees socket buffers that carried a value).
//!
//! Every `unsafe` block is one system call (`mmap`, `mlock`, `munmap`) or a copy into a mapping
//! this type owns.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::memfd::{MFdFlags, memfd_create};

/// A memfd holding one value, mapped and locked while it holds it.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    /// The locked mapping (address, length); None for an empty value or once wiped.
    map: Option<(usize, usize)>,
}

impl Memfd {
    /// A new memfd holding `bytes`, its pages locked in memory. Fails (and leaves nothing
    /// behind) when any step fails, in particular when the pages cannot be locked.
    pub fn with_bytes(bytes: &[u8]) -> io::Result<Memfd> {
        let fd = memfd_create(c"fyvault-secret", MFdFlags::MFD_CLOEXEC)?;
        let mut m = Memfd { fd, map: None };
        if bytes.is_empty() {
            return Ok(m);
        }
        let len = bytes.len();
        let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("value too large"))?;
        nix::unistd::ftruncate(&m.fd, size)?;
        // SAFETY: a new shared mapping of `len` bytes of our memfd (just sized to `len`); the
        // kernel chooses the address. Unmapped in `unmap` (also on every error below, via Drop).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                m.fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        m.map = Some((addr as usize, len));
        // SAFETY: mlock of the mapping we just made; faults its pages in and pins them.
        if unsafe { libc::mlock(addr, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is `len` writable bytes that only this value owns; `bytes` is a
        // distinct slice of the same length.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), len) };
        Ok(m)
    }

    /// The file's size now (0 once wiped).
    #[cfg(test)]
    fn len(&self) -> io::Result<u64> {
        Ok(nix::sys::stat::fstat(self.fd.as_fd())
            .map_err(io::Error::from)?
            .st_size as u64)
    }

    #[cfg(test)]
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Takes the value out of the file at once (see the module docs): truncates it to 0 bytes
    /// and drops the mapping. Idempotent.
    pub fn wipe(&mut self) {
        // Cannot fail for a memfd we own that has no seals; if it did, `unmap` still runs and
        // the next wipe (Drop) tries again.
        if let Err(e) = nix::unistd::ftruncate(&self.fd, 0) {
            tracing::error!(error = %e, "passthrough: truncating a secret's memfd failed");
        }
        self.unmap();
    }

    fn unmap(&mut self) {
        if let Some((addr, len)) = self.map.take() {
            // SAFETY: the mapping made in `with_bytes`, unmapped once (`take`).
            unsafe {
                libc::munmap(addr as *mut libc::c_void, len);
            }
        }
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        self.wipe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn holds_the_bytes_until_wiped_then_reads_end_of_file() {
        let mut m = Memfd::with_bytes(b"sk_live_123").unwrap();
        assert_eq!(m.len().unwrap(), 11);
        // A second open file of the same memfd, as a passthrough handle would be.
        let reader = std::fs::File::open(format!("/proc/self/fd/{}", m.as_fd().as_raw_fd()))
            .expect("reopen the memfd");
        let mut buf = [0u8; 64];
        let n = reader.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"sk_live_123");
        m.wipe();
        assert_eq!(m.len().unwrap(), 0);
        assert_eq!(
            reader.read_at(&mut buf, 0).unwrap(),
            0,
            "end of file once wiped"
        );
        m.wipe();
        assert!(m.is_empty().unwrap());
    }

    #[test]
    fn an_empty_value_is_an_empty_file() {
        let m = Memfd::with_bytes(b"").unwrap();
        assert!(m.is_empty().unwrap());
    }
}
