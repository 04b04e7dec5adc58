//! Server byte streams: a hostile or broken server must not panic the agent. The state machine
//! gets a pipelined extended batch first so server messages have something to answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::{
    pg::{backend::{Backend, sasl_mechanisms}, frame, frontend::Frontend},
    proxy::postgres::state::ProtocolState,
};

fuzz_target!(|data: &[u8]| {
    let mut state = ProtocolState::new();
    let mut pos = 0;
    let mut primed = false;
    while let Ok(Some(h)) = frame::header(&data[pos..], 1 << 20) {
        if data.len() - pos < h.total {
            break;
        }
        if let Ok(msg) = Backend::decode(h.tag, &data[pos + 5..pos + h.total]) {
            match &msg {
                Backend::Authentication { code: 10, data } => {
                    let _ = sasl_mechanisms(data);
                }
                Backend::RowDescription(desc) => for _ in desc.fields() {},
                _ => {}
            }
            let _ = state.on_backend(&msg);
            if !primed && state.phase == warden::proxy::postgres::state::Phase::Ready {
                primed = true;
                for m in [
                    Frontend::Parse { name: b"s", sql: b"select 1", param_types: vec![] },
                    Frontend::Describe { kind: b'S', name: b"s" },
                    Frontend::Execute { portal: b"", max_rows: 0 },
                    Frontend::Query(b"select 1; select 2"),
                    Frontend::Sync,
                ] {
                    let _ = state.on_frontend(&m, None);
                }
            }
        }
        pos += h.total;
    }
});
