//! The patch functions: a target object and a patch (split at the first
//! NUL byte; the first byte picks JSON, merge, strategic merge or apply)
//! must patch or give a 4xx `ApiError`, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_core::patch::{self, PatchType};

fuzz_target!(|data: &[u8]| {
    let [kind, rest @ ..] = data else {
        return;
    };
    let kind = match kind % 4 {
        0 => PatchType::Json,
        1 => PatchType::Merge,
        2 => PatchType::Strategic,
        _ => PatchType::Apply,
    };
    let (target, patch) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&b"{}"[..], rest),
    };
    let Ok(mut target) = serde_json::from_slice::<serde_json::Value>(target) else {
        return;
    };
    if let Err(e) = patch::apply(kind, &mut target, patch) {
        assert!((400..500).contains(&e.code), "{}: {}", e.code, e.message);
    }
});
