//! The host↔enclave frame codec, used by both ends: a 4-byte big-endian length, then that many
//! bytes of protobuf (`wallet.enclave.v1`). A frame is at most [`MAX_FRAME`] bytes; a larger
//! declared length is refused before anything is allocated, and ends the connection (the stream
//! can no longer be trusted to be in sync).

/// Largest frame body either side accepts: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Errors of the frame codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The declared or encoded length exceeds [`MAX_FRAME`].
    TooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes a message as one frame: 4-byte big-endian length, then the protobuf bytes.
///
/// # Errors
/// [`FrameError::TooLarge`] when the message is larger than [`MAX_FRAME`]: such a frame is
/// never sent.
pub fn encode_frame<M: prost::Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(
        &u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?.to_be_bytes(),
    );
    msg.encode(&mut buf).map_err(|_| FrameError::TooLarge(len))?;
    Ok(buf)
}

/// Reads the length of a frame from its 4-byte header, before anything is allocated.
///
/// # Errors
/// [`FrameError::TooLarge`] past [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Why [`read_frame`] stopped.
#[cfg(feature = "io")]
#[derive(Debug)]
pub enum ReadError {
    /// The peer declared a frame larger than [`MAX_FRAME`].
    Frame(FrameError),
    /// The stream failed or ended inside a frame.
    Io(std::io::Error),
}

#[cfg(feature = "io")]
impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(e) => e.fmt(f),
            Self::Io(e) => write!(f, "frame read: {e}"),
        }
    }
}

#[cfg(feature = "io")]
impl std::error::Error for ReadError {}

/// Reads one frame body from `rd` (wrap sockets in a `BufReader`: several frames arriving
/// together then cost one read). `Ok(None)` is a clean end of stream between frames.
///
/// # Errors
/// [`ReadError::Frame`] for an oversized declared length (nothing allocated);
/// [`ReadError::Io`] when the stream fails or ends inside a frame.
#[cfg(feature = "io")]
pub async fn read_frame<R>(rd: &mut R) -> Result<Option<Vec<u8>>, ReadError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let mut header = [0u8; 4];
    match rd.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let len = frame_len(header).map_err(ReadError::Frame)?;
    let mut buf = vec![0u8; len];
    rd.read_exact(&mut buf).await.map_err(ReadError::Io)?;
    Ok(Some(buf))
}

/// Frames are joined into writes of about this many bytes by [`write_joined`].
#[cfg(feature = "io")]
pub const JOINED_WRITE: usize = 64 * 1024;

/// Writes the encoded frame `first` and every frame `more` has ready behind it (a queue's
/// `try_recv`), joined into writes of about [`JOINED_WRITE`] bytes: frames ready together cost
/// one system call, and the peer's buffered reader takes them in one read. `batch` is scratch
/// space kept between calls (empty on return; shrunk back after an outsized frame). Nothing is
/// held back: when `more` has nothing ready, what was joined is written before returning.
///
/// # Errors
/// The first write error; the stream is then unusable.
#[cfg(feature = "io")]
pub async fn write_joined<W>(
    wr: &mut W,
    batch: &mut Vec<u8>,
    first: Vec<u8>,
    mut more: impl FnMut() -> Option<Vec<u8>>,
) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        if batch.is_empty() && frame.len() >= JOINED_WRITE {
            wr.write_all(&frame).await?;
        } else {
            batch.extend_from_slice(&frame);
            if batch.len() >= JOINED_WRITE {
                wr.write_all(batch).await?;
                batch.clear();
            }
        }
        next = more();
    }
    if !batch.is_empty() {
        wr.write_all(batch).await?;
        batch.clear();
    }
    if batch.capacity() > 4 * JOINED_WRITE {
        *batch = Vec::new();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enclave::v1::{enclave_request::Body, EnclaveRequest},
        gateway::v1::{GetStatusRequest, KytRequest},
    };
    use prost::Message as _;

    #[test]
    fn frame_round_trip_and_cap() {
        let req = EnclaveRequest {
            challenge: Vec::new(),
            protocol_version: 1,
            request_id: 7,
            body: Some(Body::GetStatus(GetStatusRequest {})),
        };
        let f = encode_frame(&req).unwrap();
        let len = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - 4);
        assert_eq!(EnclaveRequest::decode(&f[4..]).unwrap(), req);
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
        let huge = KytRequest { auth: None, addresses: vec!["x".repeat(1024); 1100] };
        assert!(matches!(encode_frame(&huge), Err(FrameError::TooLarge(_))));
    }

    #[cfg(feature = "io")]
    #[tokio::test]
    async fn read_frame_reads_back_to_back_frames_and_refuses_oversized_ones() {
        let req = EnclaveRequest {
            challenge: Vec::new(),
            protocol_version: 1,
            request_id: 9,
            body: None,
        };
        let mut bytes = encode_frame(&req).unwrap();
        bytes.extend(encode_frame(&req).unwrap());
        let mut rd = bytes.as_slice();
        for _ in 0..2 {
            let body = read_frame(&mut rd).await.unwrap().unwrap();
            assert_eq!(EnclaveRequest::decode(body.as_slice()).unwrap(), req);
        }
        assert!(read_frame(&mut rd).await.unwrap().is_none(), "clean end");
        let mut cut = &encode_frame(&req).unwrap()[..5];
        assert!(matches!(read_frame(&mut cut).await, Err(ReadError::Io(_))), "end inside a frame");
        let big = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(read_frame(&mut &big[..]).await, Err(ReadError::Frame(_))));
    }

    #[cfg(feature = "io")]
    #[tokio::test]
    async fn write_joined_writes_every_ready_frame_in_order() {
        let frames: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                let req = EnclaveRequest {
                    challenge: vec![0; (i as usize * 997) % 3000],
                    protocol_version: 1,
                    request_id: u64::from(i),
                    body: None,
                };
                encode_frame(&req).unwrap()
            })
            .collect();
        let mut big = encode_frame(&EnclaveRequest {
            challenge: vec![1; 100_000],
            protocol_version: 1,
            request_id: 999,
            body: None,
        })
        .unwrap();
        let mut queue: std::collections::VecDeque<Vec<u8>> = frames.iter().cloned().collect();
        queue.insert(50, std::mem::take(&mut big));
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let first = queue.pop_front().unwrap();
        write_joined(&mut out, &mut batch, first, || queue.pop_front()).await.unwrap();
        assert!(batch.is_empty() && queue.is_empty());
        let mut rd = out.as_slice();
        let mut ids = Vec::new();
        while let Some(body) = read_frame(&mut rd).await.unwrap() {
            ids.push(EnclaveRequest::decode(body.as_slice()).unwrap().request_id);
        }
        let mut want: Vec<u64> = (0..200).collect();
        want.insert(50, 999);
        assert_eq!(ids, want);
    }
}
