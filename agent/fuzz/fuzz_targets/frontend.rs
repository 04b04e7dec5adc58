//! Client byte streams: framing, start-up packets, message decoding and the session state
//! machine must reject anything malformed with an error, never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::{
    pg::{backend::Backend, frame, frontend::{Frontend, Startup}},
    proxy::postgres::state::ProtocolState,
};

fuzz_target!(|data: &[u8]| {
    // The first bytes as a start-up packet.
    if let Ok(Some(len)) = frame::startup_len(data) {
        if data.len() >= len {
            let _ = Startup::decode(&data[..len]);
        }
    }
    // The rest as regular messages into a session that is ready.
    let mut state = ProtocolState::new();
    let _ = state.on_backend(&Backend::Authentication { code: 0, data: b"" });
    let _ = state.on_backend(&Backend::ReadyForQuery { status: b'I' });
    let mut pos = 0;
    while let Ok(Some(h)) = frame::header(&data[pos..], 1 << 20) {
        if data.len() - pos < h.total {
            break;
        }
        if let Ok(msg) = Frontend::decode(h.tag, &data[pos + 5..pos + h.total]) {
            if let Frontend::Bind(bind) = &msg {
                for _ in bind.params() {}
            }
            let _ = state.on_frontend(&msg, None);
        }
        pos += h.total;
    }
});
