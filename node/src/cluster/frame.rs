//! Length-delimited prost frames on a stream between nodes: a `u32` big-endian length, then
//! the frame. The body of a Raft frame is the request or response as the store serializes it.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted; snapshots are streamed after their header frame, not framed.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(enumeration = "Kind", tag = "1")]
    pub kind: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    Request = 0,
    Response = 1,
    /// A snapshot's vote and metadata; the file's bytes follow on the stream.
    SnapshotHeader = 2,
    SnapshotResponse = 3,
    Error = 4,
    /// Opens a node's control stream: a snapshot of its routes, then `Control` frames (route
    /// changes, and the messages of session takeover).
    Routes = 5,
    Control = 6,
    /// Opens a lane: a stream of messages forwarded by the node it names, numbered from the
    /// sequence number it gives. `Forward` frames follow, one message each; the receiving
    /// node answers on the same stream with `Ack` frames, each the highest number up to which
    /// it has taken every message.
    Messages = 7,
    Forward = 8,
    Ack = 9,
    /// A `Forward` that also names the share groups (name, filter) the receiving node is to
    /// deliver it to one member of: postcard `(groups, message)`.
    ForwardShared = 10,
    /// A `Forward` of a QoS 1/2 message with what its sender knew when it routed it (see
    /// `lane::Coverage`): postcard `(coverage, groups, message)`.
    Routed = 11,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Appends a frame to `out`, to be written with others in one go.
pub fn encode_frame(kind: Kind, body: Vec<u8>, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let frame = Frame {
        kind: kind as i32,
        body,
    };
    let len = frame.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
    out.reserve(4 + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    frame.encode(out).map_err(|_| FrameError::TooLarge(len))?;
    Ok(())
}

/// Reads frames as they arrive, a chunk at a time: every frame a chunk completes is at hand
/// before the next read, so that a reader can answer a burst once.
pub struct FrameReader<R> {
    stream: R,
    buffer: bytes::BytesMut,
}

/// Bytes asked of the stream per read, at least.
const READ_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R) -> Self {
        Self {
            stream,
            buffer: bytes::BytesMut::new(),
        }
    }

    /// The next complete frame already received, if any.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        use bytes::Buf;
        let Some(prefix) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        self.buffer.advance(4);
        let body = self.buffer.split_to(len);
        Ok(Some(Frame::decode(body.freeze())?))
    }

    /// Waits for more of the stream; false once it has ended. Cancel-safe.
    pub async fn fill(&mut self) -> Result<bool, FrameError> {
        self.buffer.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.buffer).await? > 0)
    }
}

/// Writes one frame and flushes it: streams that buffer writes send it now.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    stream: &mut W,
    kind: Kind,
    body: Vec<u8>,
) -> Result<(), FrameError> {
    let frame = Frame {
        kind: kind as i32,
        body,
    };
    let bytes = frame.encode_to_vec();
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge(bytes.len()))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    Ok(Frame::decode(bytes.as_slice())?)
}
