//! Writes to vsock in pieces of at most [`MAX_VSOCK_WRITE`] bytes.
//!
//! Linux (6.12 stable and later) builds a vsock packet larger than about 32 KiB as a non-linear
//! buffer whose payload spans several virtqueue descriptors. Device implementations that read a
//! packet's payload from a single descriptor drop such packets — rust-vmm's `virtio-vsock` crate
//! (0.10–0.12, under `vhost-device-vsock`, which `scripts/nitro-e2e.sh` uses) does, and the
//! stream then silently loses bytes. One `write` call never becomes more than one packet per
//! 64 KiB, and never a packet larger than the call, so capping each call at 16 KiB keeps every
//! packet in one descriptor whatever the device. It costs a system call per 16 KiB.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest single write passed to a vsock stream, bytes: half the size above which Linux
/// makes a packet non-linear (`PAGE_SIZE << PAGE_ALLOC_COSTLY_ORDER`, less overhead).
pub const MAX_VSOCK_WRITE: usize = 16 * 1024;

/// A stream whose writes go down in pieces of at most [`MAX_VSOCK_WRITE`] bytes (reads pass
/// through). For async streams (`AsyncRead + AsyncWrite`) and blocking ones (`Read + Write`).
#[derive(Debug)]
pub struct SmallWrites<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for SmallWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SmallWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(MAX_VSOCK_WRITE);
        Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    // No vectored writes: the default `poll_write_vectored` writes the first non-empty buffer
    // through `poll_write`, so through the cap.
}

impl<S: io::Read> io::Read for SmallWrites<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: io::Write> io::Write for SmallWrites<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_VSOCK_WRITE);
        self.0.write(&buf[..n])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
    // The default `write_vectored` writes the first non-empty buffer through `write`.
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the size of every write it gets.
    #[derive(Default)]
    struct Sizes(Vec<usize>, Vec<u8>);

    impl io::Write for Sizes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocking_writes_are_capped_and_complete() {
        use io::Write as _;
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut w = SmallWrites(Sizes::default());
        w.write_all(&data).unwrap();
        let bufs = [io::IoSlice::new(&data[..40_000]), io::IoSlice::new(&data[40_000..])];
        let n = w.write_vectored(&bufs).unwrap();
        assert_eq!(n, MAX_VSOCK_WRITE);
        assert!(w.0 .0.iter().all(|s| *s <= MAX_VSOCK_WRITE), "{:?}", w.0 .0);
        assert_eq!(&w.0 .1[..data.len()], &data[..]);
    }

    #[tokio::test]
    async fn async_writes_are_capped_and_complete() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = SmallWrites(a);
        let data = vec![7u8; 300_000];
        let n = w.write(&data).await.unwrap();
        assert_eq!(n, MAX_VSOCK_WRITE);
        w.write_all(&data[n..]).await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
    }
}
