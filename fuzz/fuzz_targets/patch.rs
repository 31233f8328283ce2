//! The patch functions: a target object and a patch (split at the first
//! NUL byte; the first byte picks JSON, merge, strategic merge, apply, or
//! server-side apply with field ownership, unforced or forced and followed
//! by another manager's update) must patch or give a 4xx `ApiError`, never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_core::managed_fields::{self, FieldManager, Operation};
use orch_core::patch::{self, PatchType};

fuzz_target!(|data: &[u8]| {
    let [kind, rest @ ..] = data else {
        return;
    };
    let mode = kind % 6;
    let kind = match mode {
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
    let result = if mode >= 4 {
        apply_with_ownership(&mut target, patch, mode == 5)
    } else {
        patch::apply(kind, &mut target, patch)
    };
    if let Err(e) = result {
        assert!((400..500).contains(&e.code), "{}: {}", e.code, e.message);
    }
});

fn manager(name: &str, operation: Operation) -> FieldManager {
    FieldManager {
        name: name.into(),
        operation,
        subresource: None,
    }
}

fn apply_with_ownership(
    target: &mut serde_json::Value,
    body: &[u8],
    force: bool,
) -> Result<(), orch_core::ApiError> {
    let config = patch::parse_apply_config(body)?;
    let before = target.clone();
    managed_fields::apply(
        target,
        &config,
        &manager("kubectl", Operation::Apply),
        force,
        "v1",
    )?;
    if force {
        managed_fields::record_update(
            &before,
            target,
            &manager("editor", Operation::Update),
            "v1",
        )?;
    }
    Ok(())
}
