//! The host<->enclave frame codec (`wallet_proto::frame`), both ends' reader: a stream of bytes
//! read frame by frame (`read_frame`, which refuses an oversized length before allocating), each
//! body decoded as an `EnclaveRequest` (what the enclave reads) and an `EnclaveResponse` (what
//! the gateway reads); what decodes re-encodes to a frame that decodes to the same message.

#![no_main]

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wallet_proto::{
    enclave::v1::{EnclaveRequest, EnclaveResponse},
    frame::{encode_frame, frame_len, read_frame, ReadError, MAX_FRAME},
};

/// Runs a future that never waits (reads from a byte slice are always ready).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read from memory waited"),
    }
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(msg) = M::decode(body) else { return };
    // Unknown fields are dropped and lengths made canonical, but a negative enum sent as a
    // 5-byte varint re-encodes in 10: only a body near the limit may not fit again.
    let Ok(frame) = encode_frame(&msg) else {
        assert!(msg.encoded_len() > MAX_FRAME);
        return;
    };
    let len = frame_len(frame[..4].try_into().expect("header")).expect("length");
    assert_eq!(len, frame.len() - 4);
    assert_eq!(M::decode(&frame[4..]).expect("re-decodes"), msg);
}

fuzz_target!(|data: &[u8]| {
    let mut rd = data;
    loop {
        let before = rd.len();
        match now(read_frame(&mut rd)) {
            Ok(Some(body)) => {
                assert!(body.len() <= MAX_FRAME);
                assert_eq!(before - rd.len(), body.len() + 4);
                round_trip::<EnclaveRequest>(&body);
                round_trip::<EnclaveResponse>(&body);
            }
            Ok(None) => {
                assert!(before < 4, "clean end with a whole header left");
                break;
            }
            Err(ReadError::Frame(_)) => {
                let header: [u8; 4] = data[data.len() - before..][..4].try_into().expect("header");
                assert!(u32::from_be_bytes(header) as usize > MAX_FRAME);
                break;
            }
            Err(ReadError::Io(_)) => break,
        }
    }
});
