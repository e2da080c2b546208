//! The gateway's response body: the upstream's, streamed through untouched, or a small local one.

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// One body type for both kinds of response, so no response is boxed.
#[derive(Debug)]
pub enum GatewayBody {
    /// Streamed from the upstream frame by frame; never buffered.
    Upstream(Incoming),
    /// A body made here (problem documents); `None` once sent.
    Local(Option<Bytes>),
}

impl GatewayBody {
    pub fn local(bytes: Bytes) -> Self {
        Self::Local(Some(bytes))
    }

    pub fn empty() -> Self {
        Self::Local(None)
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream(body) => Pin::new(body).poll_frame(cx),
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
